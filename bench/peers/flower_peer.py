"""The Flower peer of fedrad's pneumonia study (bench/peers.sh runs it beside fedrad).

    python flower_peer.py server --port P --rounds R --out DIR
    python flower_peer.py client --address 127.0.0.1:P --site DIR --site-id site-a --site-index 1 --rounds R --out DIR

A real Flower server (gRPC) and one process per site, as `fedrad coordinator` + `fedrad site`.
The protocol is made to match fedrad's: each round a site evaluates the model it received on its
validation split (scores go back with the update, so the server has the pooled AUC of the received
model, as fedrad's histograms give it), then trains one local epoch; after the last round one
evaluation round scores the final model on every site's validation split (fedrad's final
EVAL_INS). Sample-weighted FedAvg. The server records per round: wall time (configure_fit to the
end of aggregate_fit), each site's local training time, updates received; the final pooled AUC.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

import flwr as fl
from flwr.common import ndarrays_to_parameters

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pneumonia_torch as pt  # noqa: E402


class Site(fl.client.NumPyClient):
    def __init__(self, site_dir, site_index, rounds):
        t0 = time.perf_counter()
        self.train_x, self.train_y = pt.load_split(os.path.join(site_dir, "train"))
        self.val_x, self.val_y = pt.load_split(os.path.join(site_dir, "val"))
        self.load_seconds = time.perf_counter() - t0
        self.model = pt.make_model()
        self.site_index = site_index
        self.rounds = rounds
        self.fit_seconds = []

    def get_parameters(self, config):
        return pt.get_weights(self.model)

    def fit(self, parameters, config):
        t0 = time.perf_counter()
        pt.set_weights(self.model, parameters)
        scores, val_loss = pt.predict(self.model, self.val_x, self.val_y)
        t1 = time.perf_counter()
        rnd = int(config["round"])
        lr = pt.cosine_lr(rnd - 1, int(config["rounds"]))
        loss = pt.fit_epoch(self.model, self.train_x, self.train_y, lr, seed=int(config["seed"]) * 7919 + self.site_index)
        t2 = time.perf_counter()
        self.fit_seconds.append(t2 - t1)
        metrics = {"train_seconds": t2 - t1, "eval_seconds": t1 - t0, "train_loss": loss, "val_loss": val_loss,
                   "scores": scores.tobytes(), "labels": self.val_y.numpy().astype(np.uint8).tobytes()}
        return pt.get_weights(self.model), int(self.train_x.size(0)), metrics

    def evaluate(self, parameters, config):
        pt.set_weights(self.model, parameters)
        scores, val_loss = pt.predict(self.model, self.val_x, self.val_y)
        return float(val_loss), int(self.val_x.size(0)), {
            "scores": scores.tobytes(), "labels": self.val_y.numpy().astype(np.uint8).tobytes()}


class FakeSite(fl.client.NumPyClient):
    """No data, no training: fit returns the received weights plus a small offset at once, as
    bench/coordinator_scaling's fake sites do, so that a round costs only the federation itself."""

    def __init__(self, site_index):
        self.site_index = site_index
        self.scores = np.array([0.1, 0.4, 0.35, 0.8], np.float32)
        self.labels = np.array([0, 0, 1, 1], np.uint8)

    def get_parameters(self, config):
        return pt.get_weights(pt.make_model())

    def fit(self, parameters, config):
        t0 = time.perf_counter()
        out = [np.asarray(a, np.float32) + np.float32(1e-3 * (self.site_index % 7 + 1)) for a in parameters]
        metrics = {"train_seconds": time.perf_counter() - t0, "eval_seconds": 0.0, "train_loss": 0.5, "val_loss": 0.5,
                   "scores": self.scores.tobytes(), "labels": self.labels.tobytes()}
        return out, 100 + self.site_index, metrics

    def evaluate(self, parameters, config):
        return 0.5, 4, {"scores": self.scores.tobytes(), "labels": self.labels.tobytes()}


def pooled_auc(results):
    scores = np.concatenate([np.frombuffer(r.metrics["scores"], np.float32) for _, r in results])
    labels = np.concatenate([np.frombuffer(r.metrics["labels"], np.uint8) for _, r in results])
    return pt.auc(scores, labels), int(len(scores))


class BenchFedAvg(fl.server.strategy.FedAvg):
    def __init__(self, rounds, num_sites, seed=42, **kw):
        super().__init__(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=num_sites,
                         min_evaluate_clients=num_sites, min_available_clients=num_sites,
                         on_fit_config_fn=lambda r: {"round": r, "rounds": rounds, "seed": seed + r}, **kw)
        self.rounds = rounds
        self.log = []
        self.final = {}
        self._start = {}

    def configure_fit(self, server_round, parameters, client_manager):
        # The clock starts once the sites are there (sampling waits for them), as fedrad's round
        # clock starts after every site has joined.
        instructions = super().configure_fit(server_round, parameters, client_manager)
        self._start[server_round] = time.perf_counter()
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        agg = super().aggregate_fit(server_round, results, failures)
        seconds = time.perf_counter() - self._start[server_round]
        a, n = pooled_auc(results) if results else (float("nan"), 0)
        self.log.append({
            "round": server_round, "seconds": seconds, "received": len(results), "failures": len(failures),
            "train_seconds": [float(r.metrics["train_seconds"]) for _, r in results],
            "eval_seconds": [float(r.metrics["eval_seconds"]) for _, r in results],
            "train_loss": [float(r.metrics["train_loss"]) for _, r in results],
            "auc_received_model": a, "n_val": n})
        return agg

    def configure_evaluate(self, server_round, parameters, client_manager):
        if server_round != self.rounds:
            return []  # as fedrad: only the final model is evaluated in a round of its own
        self._start["eval"] = time.perf_counter()
        return super().configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        a, n = pooled_auc(results) if results else (float("nan"), 0)
        self.final = {"auc": a, "n_val": n, "seconds": time.perf_counter() - self._start["eval"],
                      "received": len(results), "failures": len(failures)}
        loss = sum(r.num_examples * r.loss for _, r in results) / max(1, sum(r.num_examples for _, r in results))
        return loss, {"auc": a}


def server(args):
    model = pt.make_model(args.seed)
    strategy = BenchFedAvg(args.rounds, args.sites, seed=args.seed,
                           initial_parameters=ndarrays_to_parameters(pt.get_weights(model)))
    t0 = time.perf_counter()
    fl.server.start_server(server_address=f"127.0.0.1:{args.port}",
                           config=fl.server.ServerConfig(num_rounds=args.rounds), strategy=strategy)
    out = {"framework": "flower", "seed": args.seed, "flwr": fl.__version__, "torch": torch.__version__, "rounds": strategy.log,
           "final": strategy.final, "wall_seconds": time.perf_counter() - t0, "vm_hwm_kb": pt.vm_hwm_kb(),
           "model_values": int(sum(a.size for a in pt.get_weights(model)))}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "server.json"), "w") as f:
        json.dump(out, f, indent=1)


def client(args):
    torch.set_num_threads(args.threads)
    if args.fake:
        fl.client.start_client(server_address=args.address, client=FakeSite(args.site_index).to_client())
        with open(os.path.join(args.out, f"{args.site_id}.json"), "w") as f:
            json.dump({"site": args.site_id, "fake": True, "vm_hwm_kb": pt.vm_hwm_kb()}, f)
        return
    site = Site(args.site, args.site_index, args.rounds)
    fl.client.start_client(server_address=args.address, client=site.to_client())
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.site_id}.json"), "w") as f:
        json.dump({"site": args.site_id, "load_seconds": site.load_seconds, "fit_seconds": site.fit_seconds,
                   "train_images": int(site.train_x.size(0)), "val_images": int(site.val_x.size(0)),
                   "vm_hwm_kb": pt.vm_hwm_kb()}, f)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--address", default="127.0.0.1:8080")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sites", type=int, default=4)
    p.add_argument("--site")
    p.add_argument("--site-id")
    p.add_argument("--site-index", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=42, help="initial model and the rounds' seeds (server)")
    p.add_argument("--fake", action="store_true", help="no data, no training (federation cost only)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    server(args) if args.mode == "server" else client(args)


if __name__ == "__main__":
    main()
