"""A counting TCP relay: listens on --listen, forwards each connection to --target on 127.0.0.1,
and counts the bytes each way (up = towards the target, i.e. site -> coordinator). On SIGTERM or
SIGINT it writes {"up": ..., "down": ..., "connections": ...} to --out and exits. The same relay
sits in front of fedrad's coordinator and Flower's server, so both are measured the same way
(TCP payload: ZMTP frames for fedrad, HTTP/2 + gRPC frames for Flower)."""
import argparse
import asyncio
import json
import signal

counts = {"up": 0, "down": 0, "connections": 0}


async def pump(reader, writer, key):
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            counts[key] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(target, creader, cwriter):
    counts["connections"] += 1
    try:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pump(creader, swriter, "up"), pump(sreader, cwriter, "down"))


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--target", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    server = await asyncio.start_server(lambda r, w: handle(a.target, r, w), "127.0.0.1", a.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    with open(a.out, "w") as f:
        json.dump(counts, f)


asyncio.run(main())
