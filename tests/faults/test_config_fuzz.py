"""Seeded random mutations of flags and YAML config files through the real CLI: every one ends in
exit 0 or in exit 2 with one line, never a traceback. ``ghns config`` resolves the configuration
exactly as every command does, then prints it and runs nothing."""

from __future__ import annotations

import dataclasses
import random

import pytest
import yaml

from ghns.config import Config

pytestmark = pytest.mark.faults

FIELDS = [f for f in dataclasses.fields(Config)]
ODD = ["", " ", "0", "-1", "1", "2.5", "-0.0", "1e999", "-1e999", "nan", "inf", "abc", "true",
       "no", "null", "[1, 2]", "{a: 1}", "0x10", "1_000", "9" * 30, "é", "a,b,c", "0.3,0.3,0.4",
       "../../etc", "\t", "--", "auto", "cpu", "cuda", "grid", "loglinear", "sgd", "full"]
YAML_VALUES = [None, True, False, 0, -3, 7, 0.5, 1e300, float("nan"), "x", "", [1, 2], {"a": 1},
               [], {}, "0.3,0.3,0.4", 2**70]


def flag_case(rng: random.Random) -> list[str]:
    args = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.08:
            args.append("--" + rng.choice(["tua", "per_class", "no-such-flag", "seed-", "x"]))
            continue
        f = rng.choice(FIELDS)
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            args.append(rng.choice([flag, "--no-" + flag[2:]]))
        elif kind < 0.14:
            args.append(flag)  # the value is missing
        else:
            value = rng.choice(ODD + [str(f.default)] + list(f.metadata.get("choices") or []))
            args += [flag, value]
    return args


def yaml_case(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.08:
        return b""
    if kind < 0.16:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    if kind < 0.24:
        return rng.choice([b"[1, 2, 3]\n", b"just a string\n", b"tau: [\n", b"a: b: c\n", b"- x\n- y\n",
                           b"tau: 0.5\ntau: 0.6\n", b"\xef\xbb\xbftau: 0.5\n", b"{{{{", b"42\n"])
    data = {}
    for _ in range(rng.randint(1, 5)):
        key = rng.choice([f.name for f in FIELDS] + ["unknown_key", "Tau", "per-class", "1"])
        data[key] = rng.choice(YAML_VALUES + [f.default for f in FIELDS if f.name == key])
    return yaml.safe_dump(data).encode()


def test_two_hundred_mutations_exit_cleanly(tmp_path, cli):
    rng = random.Random(20261130)
    outcomes = {0: 0, 2: 0}
    for case in range(220):
        args = ["config", "--run-dir", str(tmp_path / f"run{case}")]
        if rng.random() < 0.5:
            config = tmp_path / f"c{case}.yaml"
            config.write_bytes(yaml_case(rng))
            args += ["--config", str(config)]
        args += flag_case(rng) if rng.random() < 0.8 else []
        code, out, err = cli(*args)
        assert "Traceback" not in err, (args, err)
        assert code in (0, 2), (args, code, err)
        if code == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
        else:  # the last --run-dir wins (the mutations may add one: run_dir is a Config field)
            wanted = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--run-dir"][-1]
            assert yaml.safe_load(out)["run_dir"] == wanted
        outcomes[code] += 1
    assert outcomes[0] >= 20 and outcomes[2] >= 100, outcomes  # both paths exercised


def test_config_prints_what_config_reads_back(tmp_path, cli):
    code, out, _ = cli("config", "--run-dir", tmp_path / "r", "--tau", "0.3", "--fusion-rule", "grid")
    assert code == 0
    saved = tmp_path / "c.yaml"
    saved.write_text(out)
    code, again, _ = cli("config", "--config", saved)
    assert code == 0 and again == out
    assert yaml.safe_load(out)["tau"] == 0.3 and yaml.safe_load(out)["fusion_rule"] == "grid"
