"""Shared by bench/ writers: what machine, date and commit a result comes from, and replacing one
marked section of bench/RESULTS.md (<!-- NAME:begin --> ... <!-- NAME:end -->) without touching the rest."""
import datetime
import os
import re
import subprocess


def read(path, default=None):
    """A small text file's content, stripped; `default` when it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def describe():
    cpu = "?"
    for line in _run("lscpu").splitlines():
        if line.startswith("Model name:"):
            cpu = line.split(":", 1)[1].strip()
    mem_gb = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    commit = _run("git", "rev-parse", "--short", "HEAD")
    dirty = bool(_run("git", "status", "--porcelain", "--untracked-files=no"))
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "dirty": dirty,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "kernel": os.uname().release,
    }
    meta["machine"] = f"{cpu}, {meta['cores']} cores, {meta['memory_gb']:.0f} GB RAM, Linux {meta['kernel']}, no GPU"
    try:
        import torch  # the Debian torch the peers use, when this runs in their environment
        meta["torch"] = torch.__version__
    except Exception:
        pass
    return meta


def replace_section(md_path, name, section):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(md_path).read() if os.path.exists(md_path) else "# Benchmark results\n\n"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(md_path, "w") as f:
        f.write(text)
