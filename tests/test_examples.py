"""The examples the README shows run on tiny models (no download, no traceback)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_document_qa_runs_on_tiny_models_with_a_translated_column(tmp_path):
    out = tmp_path / "dqa"
    run = subprocess.run([sys.executable, str(ROOT / "examples/document_qa.py"), "--receiver", "tiny-llama",
                          "--sharer", "tiny-qwen2", "--docs", "1", "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["modes"]) == {"receiver", "t2t", "c2c-cold", "c2c-warm", "translated"}
    assert result["questions"] >= 1 and out.with_suffix(".png").is_file()
