"""wrk, the load generator: its Lua scripts (closed loop, and paced like wrk2 so that latency counts from
the scheduled send time), one run of it (``PhaseRun``) and the nearest-rank percentile of the figures."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# wrk's Lua: one Lua state per wrk thread. A body script defines build_request() (and init_body());
# a mode script defines init/request/response/delay/done around it.
LUA_POST = r"""
local token, run = os.getenv("LOAD_TOKEN"), os.getenv("LOAD_RUN")
local counter, prefix = 0, ""
local function init_body() prefix = run .. "-" .. tostring(tid or 0) .. "-" end
local function build_request()
  counter = counter + 1
  local client = counter % 4
  local body = string.format(
    '{"scope":"samples","client_id":"%d","pair_ids":["c%d-p%d"],"model":"load-model",' ..
    '"legal_basis":"art17_1_b","reason":"load test"}', client, client, counter % 50)
  return wrk.format("POST", "/v1/erasure-requests", {
    ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. counter}, body)
end
"""

LUA_GET = r"""
local token = os.getenv("LOAD_TOKEN")
local ids = {}
for line in io.lines(os.getenv("LOAD_IDS")) do ids[#ids + 1] = line end
local function init_body() math.randomseed(os.time() + (tid or 0)) end
local function build_request()
  return wrk.format("GET", "/v1/erasure-requests/" .. ids[math.random(#ids)],
                    {["Authorization"] = "Bearer " .. token})
end
"""

LUA_SETUP = r"""
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
"""

# closed loop: the next request as soon as the answer arrives; wrk's own latency histogram.
LUA_CLOSED = r"""
function init(args) init_body() end
request = build_request
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,' ..
    '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

# open loop (wrk2's idea, on plain wrk): one connection per wrk thread, requests scheduled every
# connections/rate seconds from a random phase; delay() waits for the next slot, and each latency is
# measured from the slot (monotonic clock through LuaJIT's ffi) and written to a file per thread.
LUA_PACED = r"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } lethe_timespec;
           int clock_gettime(int clk, lethe_timespec *tp); ]]
local clock = ffi.new("lethe_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end
local interval_us, next_slot, sent_slot, out, answered = 0, 0, 0, nil, 0
function init(args)
  init_body()
  interval_us = 1000000 * tonumber(os.getenv("LOAD_CONNECTIONS")) / tonumber(os.getenv("LOAD_RATE"))
  math.randomseed(tid * 7919)
  next_slot = now_us() + math.random() * interval_us
  out = io.open(os.getenv("LOAD_LATENCY_PREFIX") .. tostring(tid), "w")
end
function delay()
  local wait_ms = (next_slot - now_us()) / 1000
  if wait_ms < 0 then return 0 end
  return wait_ms
end
function request()
  sent_slot = next_slot
  next_slot = next_slot + interval_us
  return build_request()
end
function response(status, headers, body)
  answered = answered + 1
  out:write(string.format("%d %d\n", status, now_us() - sent_slot))
  if answered % 50 == 0 then out:flush() end
end
"""


def lua_script(body: str, mode: str) -> str:
    return LUA_SETUP + body + {"closed": LUA_CLOSED, "paced": LUA_PACED}[mode]


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed: run scripts/install_wrk.sh (apt-get install -y wrk) and retry.")
    return path



def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Phase:
    """One wrk run: a route, closed loop (``rate`` None) or paced at ``rate`` requests/s."""

    name: str
    body: str  # LUA_POST or LUA_GET
    connections: int
    rate: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "paced"

    @property
    def load(self) -> str:
        return f"closed, {self.connections} conns" if self.rate is None else f"{self.rate:g}/s offered"


class PhaseRun:
    def __init__(self, wrk: str, phase: Phase, base: str, seconds: float, work: Path, env: dict[str, str]):
        self.phase, self.seconds = phase, seconds
        tag = f"{phase.name}-{uuid.uuid4().hex[:6]}".replace(" ", "_").replace("/", "_")
        script = work / f"{tag}.lua"
        script.write_text(lua_script(phase.body, phase.mode))
        self.latency_prefix = str(work / f"{tag}.latency.")
        env = {**env, **phase.env, "LOAD_LATENCY_PREFIX": self.latency_prefix,
               "LOAD_CONNECTIONS": str(phase.connections), "LOAD_RATE": str(phase.rate or 0)}
        threads = phase.connections if phase.rate is not None else 1
        command = [wrk, "-t", str(threads), "-c", str(phase.connections), "-d", f"{seconds:g}s",
                   "--timeout", "5s", "-s", str(script), base]
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict:
        stdout, stderr = self.process.communicate(timeout=self.seconds + 30)
        if self.process.returncode != 0:
            raise SystemExit(f"wrk failed ({self.process.returncode}): {stderr or stdout}")
        row = {"name": self.phase.name, "load": self.phase.load, "mode": self.phase.mode,
               "rate": self.phase.rate, "seconds": self.seconds}
        if self.phase.rate is None:
            line = next((text for text in stdout.splitlines() if text.startswith("WRK_JSON ")), None)
            if line is None:
                raise SystemExit(f"wrk printed no figures:\n{stdout}\n{stderr}")
            raw = json.loads(line.removeprefix("WRK_JSON "))
            errors = raw["connect"] + raw["read"] + raw["write"] + raw["status"] + raw["timeout"]
            row.update(requests=raw["requests"], errors=errors,
                       per_second=round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
                       **{key: round(raw[f"{key}_us"] / 1000, 2) for key in ("p50", "p90", "p99", "max")})
            return row
        latencies, errors = [], 0
        for path in Path(self.latency_prefix).parent.glob(Path(self.latency_prefix).name + "*"):
            for line in path.read_text().splitlines():
                status, micros = line.split()
                errors += not 200 <= int(status) < 300
                latencies.append(int(micros) / 1000)
        latencies.sort()
        row.update(requests=len(latencies), errors=errors, per_second=round(len(latencies) / self.seconds, 1),
                   **{key: round(percentile(latencies, q), 2) for key, q in
                      (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))})
        return row
