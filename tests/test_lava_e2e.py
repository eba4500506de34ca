"""The LAVA runtime for real: `kpipe run` with `runtime: lava` against the local LAVA that
vm-templates/lava/lava-local.sh starts (CI starts it before anything else and sets KPIPE_REQUIRE_LAVA=1,
so there this test cannot skip). Jobs boot the session's kernel on LAVA's qemu device, run the flash VMM
in LAVA's test shell and come back as repetitions; a kernel that panics is the candidate's."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import small_config

from pipeline.machines.lava import LavaClient, LavaSettings

pytestmark = [pytest.mark.slow, pytest.mark.lava]


def _lab() -> LavaClient:
    settings = LavaSettings()
    try:
        client = LavaClient(settings, Path(settings.token_file).read_text().strip(), tries=2)
    except OSError as exc:
        client, why = None, str(exc)
    else:
        ok, why = client.healthy()
        if ok:
            return client
    if os.environ.get("KPIPE_REQUIRE_LAVA"):
        pytest.fail(f"no local LAVA ({why}): vm-templates/lava/lava-local.sh start")
    pytest.skip(f"no local LAVA ({why}): vm-templates/lava/lava-local.sh install && ... start")
    raise AssertionError(client)


def test_repetitions_run_as_lava_jobs_and_a_panic_is_the_candidates(built_kernel, e2e_cache: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import main

    lab = _lab()
    cfg = small_config(tmp_path, "  - {name: panics, tree: debian-6.1, changes: [{cmdline: rdinit=/nonexistent}]}")
    cfg.write_text(cfg.read_text().replace("retries: 2", "retries: 1")
                   + "runtime: lava\nlava: {url: 'http://127.0.0.1', token_file: /var/lib/kpipe-lava/token}\n")
    monkeypatch.setenv("KPIPE_CACHE_DIR", str(e2e_cache))
    assert main(["run", "-c", str(cfg)]) == 4  # a candidate could not be evaluated (it panics)
    run_dir = next((tmp_path / "runs").iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    base = results["candidates"]["base"]
    assert base["status"] == "ok" and len(base["runs"]) == 2
    assert base["stages"]["boot"]["accelerator"].startswith("lava:") and base["stages"]["boot"]["uname_r"]
    for run in base["runs"]:
        assert run["host"] == "lava" and run["metrics"]["updates"] == 600 and run["metrics"]["boot_s"] > 0
        assert run["metrics"]["host_cpu_s"] > 0  # the same exact accounting, read from the job's log
        assert "kpipe-lava:" in (run_dir / run["console_log"]).read_text()
        job = run["raw"]["job"]  # what the job cost beyond the measurement: on the device longer than the boot
        assert job["runtime"] == "lava" and job["job_s"] > run["metrics"]["boot_s"] + job["boot_to_shell_s"] > 0
    # Every job finished and none is left pending for a resume; LAVA says Complete for each base job.
    jobs = base["stages"]["lava_jobs"]
    assert jobs and all(v is None for v in jobs.values())
    panics = results["candidates"]["panics"]
    assert panics["status"] == "boot-failed" and "Kernel panic" in panics["stages"]["boot"]["message"]
    assert [r["status"] for r in panics["retries"]] == ["boot-failed"]  # not retried: it is the kernel's
    mine = [j for j in lab.call("jobs/?limit=50&ordering=-id")["results"]
            if j["description"].startswith(f"kpipe {results['run_id']} ")]
    assert sorted(j["health"] for j in mine) == ["Complete", "Complete", "Incomplete"]


def test_a_lab_whose_workers_are_elsewhere_fetches_the_artefacts_from_kpipe_serve(built_kernel, e2e_cache: Path,
                                                                                   tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch
                                                                                   ) -> None:
    import functools
    import threading

    from pipeline.cli import _BoundedServer, _ReportHandler, main

    lab = _lab()
    fetched: list[str] = []

    class Handler(_ReportHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            fetched.append(self.path)

    store = e2e_cache / "lava-artifacts"
    store.mkdir(parents=True, exist_ok=True)
    server = _BoundedServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(store)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        cfg = small_config(tmp_path, counted=2)
        cfg.write_text(cfg.read_text() + f"runtime: lava\nlava: {{url: 'http://127.0.0.1', token_file: "
                                         f"/var/lib/kpipe-lava/token, artifact_url: '{url}'}}\n")
        monkeypatch.setenv("KPIPE_CACHE_DIR", str(e2e_cache))
        assert main(["run", "-c", str(cfg)]) == 0
    finally:
        server.shutdown()
        server.server_close()
    results = json.loads((next((tmp_path / "runs").iterdir()) / "results.json").read_text())
    run, _ = results["candidates"]["base"]["runs"]
    assert run["metrics"]["updates"] == 600
    job = lab.job(run["raw"]["job"]["id"])
    images = yaml.safe_load(job["definition"])["actions"][0]["deploy"]["images"]
    assert job["health"] == "Complete" and all(i["url"].startswith(f"{url}/") for i in images.values())
    # LAVA's worker fetched both, by their sha256 paths, from the server (not from the store's files).
    assert {p.rsplit("/", 1)[-1] for p in fetched} >= {"bzImage"} and len({p.split("/")[1] for p in fetched}) == 2
