"""pipeline.yaml errors, one by one: each names the key path and the line."""
from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError

GOOD = """\
trees:
  t:
    git: {repo}
    ref: master
baseline: base
candidates:
  - name: base
    tree: t
  - name: other
    tree: t
    changes:
      - patch: p.patch
      - cmdline: srcutree.srcu_max_nodelay_phase=1
workload:
  cycles: 10
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "p.patch").write_text("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n")
    (tmp_path / "vm-templates" / "qemu").mkdir(parents=True, exist_ok=True)
    (tmp_path / "vm-templates" / "initramfs").mkdir(parents=True, exist_ok=True)
    (tmp_path / "vm-templates" / "qemu" / "x86_64.cmd.j2").write_text("{{ qemu }}\n")
    (tmp_path / "vm-templates" / "initramfs" / "recipe.yaml").write_text("{}\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text).format(repo=tmp_path))
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


def test_good_config_loads_into_typed_objects(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.baseline == "base"
    assert [c.name for c in cfg.candidates] == ["base", "other"]
    other = cfg.candidate("other")
    assert other.cmdline == ("srcutree.srcu_max_nodelay_phase=1",)
    assert other.source_changes[0].path == (tmp_path / "p.patch").resolve()
    assert cfg.workload.cycles == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        other.name = "x"  # type: ignore[misc]  # frozen


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "colour: blue\n")
    assert "colour: unknown key" in str(err) and "(pipeline.yaml:16)" in str(err)


def test_missing_patch_file_names_path_and_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("patch: p.patch", "patch: patches/x.patch"))
    assert str(err) == "candidates[1].changes[0].patch: patches/x.patch does not exist (pipeline.yaml:12)"


def test_baseline_must_name_a_candidate(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("baseline: base", "baseline: nope"))
    assert "baseline: 'nope' names no candidate" in str(err) and ":5)" in str(err)


def test_duplicate_candidate_names(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("name: other", "name: base"))
    assert "candidates[1].name: duplicate candidate name 'base'" in str(err) and ":9)" in str(err)


def test_wrong_type(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("cycles: 10", "cycles: many"))
    assert "workload.cycles: expected int, got str 'many'" in str(err) and ":15)" in str(err)


def test_boolean_is_not_an_int(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("cycles: 10", "cycles: true"))
    assert "workload.cycles: expected int, got a boolean" in str(err)


def test_unknown_tree_reference(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("    tree: t\n  - name: other", "    tree: zz\n  - name: other"))
    assert "candidates[0].tree: 'zz' names no tree" in str(err) and ":8)" in str(err)


def test_unknown_change_kind(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("- cmdline:", "- script:"))
    assert "candidates[1].changes[1].script: unknown key" in str(err) and ":13)" in str(err)


def test_cmdline_with_shell_metacharacters_is_refused(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("srcutree.srcu_max_nodelay_phase=1", "'x=1; reboot'"))
    assert "candidates[1].changes[1].cmdline: invalid value" in str(err)


def test_missing_tarball_says_how_to_install(tmp_path: Path) -> None:
    text = GOOD.replace("    git: {repo}\n    ref: master\n", "    tarball: /nonexistent/linux-source-9.9.tar.xz\n")
    err = error_of(tmp_path, text)
    assert "trees.t.tarball" in str(err) and "apt-get install linux-source-9.9" in str(err)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "workload: [unclosed\n")
    assert "not valid YAML" in str(err) and "pipeline.yaml:" in str(err)


def test_unknown_accelerator_lists_valid_names(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "test_host:\n  accelerator: hvf\n")
    assert "test_host.accelerator" in str(err) and "auto, kvm, tcg" in str(err) and ":17)" in str(err)


def test_default_config_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / "pipeline.yaml") if Path(
        "/usr/src/linux-source-6.1.tar.xz").exists() else None
    if cfg is None:
        pytest.skip("linux-source-6.1 is not installed")
    assert cfg.baseline in {c.name for c in cfg.candidates}


def test_a_template_found_nowhere_names_the_key_and_line(tmp_path: Path) -> None:
    """Neither beside the config nor among the shipped files: a clear error with key and line."""
    p = tmp_path / "pipeline.yaml"
    p.write_text("trees:\n  t: {git: /x}\nbaseline: a\ncandidates:\n  - {name: a, tree: t}\n"
                 "test_host:\n  qemu_template: vm-templates/qemu/nope.cmd.j2\n")
    with pytest.raises(ConfigError, match=r"^test_host.qemu_template: vm-templates/qemu/nope.cmd.j2 does not exist") \
            as info:
        load_config(p)
    assert info.value.line == 7


WITH_WORKLOADS = GOOD + """\
  spin_mode: loop
  placement: apart
"""


def test_candidate_workload_overrides_the_config_workload(tmp_path: Path) -> None:
    text = WITH_WORKLOADS.replace("""  - name: other
    tree: t
""", """  - name: other
    tree: t
    role: control
    compare_to: base
    workload:
      spinners: 0
      placement: shared
""")
    cfg = load_config(write(tmp_path, text))
    other, base = cfg.candidate("other"), cfg.candidate("base")
    assert cfg.workload_of(base) == cfg.workload
    w = cfg.workload_of(other)
    # Unset keys come from the config's workload, set ones replace them.
    assert (w.cycles, w.spin_mode, w.spinners, w.placement) == (10, "loop", 0, "shared")
    assert (other.role, other.compare_to) == ("control", "base")


def test_older_pin_setting_reads_as_placement(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + "  pin: false\n"))
    assert cfg.workload.placement == "free"


@pytest.mark.parametrize("extra, key, words", [
    ("  placement: everywhere\n", "workload.placement", "apart, shared, free"),
    ("  spin_mode: wander\n", "workload.spin_mode", "io, loop, cpuid, fault"),
    ("  pin: true\n  placement: apart\n", "workload.pin", "either placement or the older pin"),
])
def test_bad_workload_settings_name_key_and_choices(tmp_path: Path, extra: str, key: str, words: str) -> None:
    err = error_of(tmp_path, GOOD + extra)
    assert err.path == key and words in str(err) and err.line is not None


def test_compare_to_must_name_a_candidate(tmp_path: Path) -> None:
    text = GOOD.replace("  - name: other\n    tree: t\n", "  - name: other\n    tree: t\n    compare_to: nobody\n")
    err = error_of(tmp_path, text)
    assert err.path == "candidates[1].compare_to" and "names no candidate" in str(err)
    assert err.line == 11


def test_candidate_workload_unknown_key(tmp_path: Path) -> None:
    text = GOOD.replace("  - name: other\n    tree: t\n",
                        "  - name: other\n    tree: t\n    workload:\n      readers: 2\n")
    err = error_of(tmp_path, text)
    assert err.path == "candidates[1].workload.readers" and "valid keys" in str(err)


def test_yaml_alias_bomb_is_refused_before_expansion(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = write(tmp_path, GOOD)
    path.write_text(path.read_text() + "\n".join(levels) + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "anchors and aliases" in str(info.value) and info.value.line is not None


def test_a_config_kept_anywhere_finds_the_shipped_templates_and_patches(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    cfg = tmp_path / "elsewhere" / "pipeline.yaml"
    cfg.parent.mkdir()
    cfg.write_text(f"trees:\n  t: {{git: {tmp_path}}}\nbaseline: b\ncandidates:\n  - {{name: b, tree: t}}\n"
                   "  - name: r\n    tree: t\n    changes: [{patch: patches/0001-srcu-v5.19-rc1-expedited-policy-"
                   "regression.patch}]\nkernel: {fragments: [vm-templates/kernel/kvm-host.config]}\n")
    c = load_config(cfg)
    assert c.test_host.qemu_template == repo / "vm-templates/qemu/x86_64.cmd.j2"
    assert c.kernel.fragments == (repo / "vm-templates/kernel/kvm-host.config",)
    assert c.candidate("r").changes[0].path == repo / "patches/0001-srcu-v5.19-rc1-expedited-policy-regression.patch"
    assert c.runs_dir == cfg.parent / "runs"  # results stay beside the config
    cfg.write_text(cfg.read_text().replace("kvm-host.config", "../../../etc/passwd"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(cfg)


HOSTILE_YAML = {  # file in tests/data/hostile -> what the error must say
    "alias-bomb.yaml": "anchors and aliases",
    "dup-keys.yaml": "given twice",
    "non-utf8.yaml": "not UTF-8",
    "deep-20000.yaml": "nested deeper",
    "number-5000-digits.yaml": "5000 characters",
    "counted-1e9.yaml": "repetitions.counted",
    "cmdline-newline.yaml": "test_host.cmdline",
    "candidate-newline-cmdline.yaml": "cmdline",
    "git-option.yaml": "trees.a.git",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_YAML))
def test_hostile_config_files_get_a_clear_error(name: str) -> None:
    path = Path(__file__).parent / "data" / "hostile" / name
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert HOSTILE_YAML[name] in str(info.value)
    if name not in ("non-utf8.yaml",):
        assert info.value.line is not None or ":" in str(info.value)


def test_every_hostile_file_has_a_test() -> None:
    names = {p.name for p in (Path(__file__).parent / "data" / "hostile").glob("*.yaml")}
    assert names == set(HOSTILE_YAML)


def test_a_workload_says_whether_controls_run_it(tmp_path: Path) -> None:
    item = "  - name: {}\n    kind: kvm-selftest\n    test: memslot_modification_stress_test\n"
    items = "workloads:\n" + item.format("a") + item.format("b") + "    controls: true\n"
    a, b = load_config(write(tmp_path, GOOD + items)).workloads
    assert not a.controls and b.controls
    assert a.runs_for("") and not a.runs_for("control") and b.runs_for("control")
    bad = items + item.format("c") + "    controls: maybe\n"
    with pytest.raises(ConfigError, match=r"workloads\[2\]\.controls"):
        load_config(write(tmp_path, GOOD + bad))
