"""The Ray runtime module starts a real local Ray on loopback. Runs in a subprocess because Ray reads its
network settings when first imported, and other tests may import Ray earlier."""

import json
import subprocess
import sys

SCRIPT = """
import json, os
from leafgen.config import RayConfig
from leafgen.distributed.runtime import ensure_ray, shutdown
resources = ensure_ray(RayConfig(num_cpus=1, temp_dir=os.environ["T"]))
again = ensure_ray()  # idempotent: joins nothing new
import ray
node = ray.nodes()[0]
print(json.dumps({"cpu": resources["CPU"], "again": again["CPU"], "ip": node["NodeManagerAddress"],
                  "dashboard": ray._private.worker.global_worker.node.address_info.get("webui_url")}))
shutdown()
"""


def test_local_ray_runs_on_loopback_with_a_short_temp_dir(tmp_path_factory):
    temp = tmp_path_factory.mktemp("r", numbered=True)
    short = f"/tmp/lgt-{temp.name}"
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    env["T"] = short
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["cpu"] == 1.0 and info["again"] == 1.0
    assert info["ip"] == "127.0.0.1"
    assert info["dashboard"] is None or info["dashboard"].startswith("127.0.0.1:")
