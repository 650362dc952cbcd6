"""DDP through torchrun: two CPU processes (gloo) train one model; only rank 0 writes."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json, os, sys, torch
    from sklearn.datasets import load_digits
    from firstepoch import DataLoaders, Learner

    torch.set_num_threads(1)
    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    run = sys.argv[1] if os.environ["RANK"] == "0" else None
    learn = Learner(DataLoaders.from_tensors(x, y, batch_size=32), "mlp", run=run)
    history = learn.fit_one_cycle(2, 1e-2)
    weights = torch.cat([p.detach().flatten() for p in learn.model.parameters()])
    out = {"rank": learn.rank, "world": learn.world_size, "steps": learn.train_iter,
           "checksum": float(weights.double().sum()), "accuracy": history[-1]["accuracy"]}
    with open(f"{sys.argv[1]}-rank{learn.rank}.json", "w") as f:  # a file each: stdout lines interleave
        json.dump(out, f)
""")


def test_two_cpu_processes_train_one_model(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    run_dir = tmp_path / "runs" / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(run_dir)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(Path(f"{run_dir}-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    # each rank sees half of the 1,438 training items: 22 steps of 32 per epoch, not 44
    assert all(r["steps"] == 2 * (719 // 32) for r in results)
    assert results[0]["checksum"] == results[1]["checksum"]  # gradients were averaged: one model
    assert results[0]["accuracy"] > 0.85
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 2
    assert proc.stdout.count("train_loss") == 1  # only rank 0 prints the epoch table
