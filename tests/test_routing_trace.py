"""Reading expert-routing traces (``model.routing.load_trace``).

Tiny hand-made traces are written to ``tmp_path`` and their routing
probabilities are worked out by hand below; every kind of bad trace must raise
``InputError`` (never another exception) whose one-line reason says where.
The shipped ``scenarios/traces/mixtral_skewed.jsonl`` is checked against the
distribution its generator states.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.errors import InputError
from model.routing import load_trace

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "scenarios" / "traces" / "mixtral_skewed.jsonl"
GENERATOR = REPO / "scenarios" / "traces" / "make_skewed_trace.py"

# 4 tokens, 2 layers, 3 experts, top-2.  SEL[token][layer] = the token's two experts.
SEL = [
    [[0, 1], [2, 0]],
    [[0, 2], [2, 1]],
    [[1, 0], [2, 0]],
    [[2, 1], [0, 2]],
]
# Layer 0: expert 0 chosen by tokens 0,1,2 (3), expert 1 by 0,2,3 (3), expert 2 by 1,3 (2); 4 tokens.
# Layer 1: expert 0 by tokens 0,2,3 (3), expert 1 by 1 (1), expert 2 by 0,1,2,3 (4); 4 tokens.
EXPECTED = ((3 / 4, 3 / 4, 2 / 4), (3 / 4, 1 / 4, 4 / 4))
DIMS = dict(num_layers=2, num_experts=3, top_k=2)


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8", newline="")
    return p


def per_layer_jsonl() -> str:
    return "".join(json.dumps({"token": t, "layer": l, "experts": SEL[t][l]}) + "\n"
                   for t in range(4) for l in range(2))


def compact_jsonl() -> str:
    return "".join(json.dumps({"token": t, "experts": SEL[t]}) + "\n" for t in range(4))


def selections_csv() -> str:
    return "token,layer,expert\n" + "".join(f"{t},{l},{e}\n" for t in range(4) for l in range(2) for e in SEL[t][l])


def bad(path: Path, **dims) -> str:
    """load_trace must raise InputError (only) with a one-line reason; returns the message."""
    with pytest.raises(InputError) as info:
        load_trace(path, **(dims or DIMS))
    err = info.value
    assert err.field == "experts.routing_trace"
    assert err.value == str(path)
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------- good traces


def test_jsonl_per_layer_form(tmp_path):
    assert load_trace(write(tmp_path, "t.jsonl", per_layer_jsonl()), **DIMS) == EXPECTED


def test_jsonl_compact_form(tmp_path):
    assert load_trace(write(tmp_path, "t.jsonl", compact_jsonl()), **DIMS) == EXPECTED


def test_csv_form(tmp_path):
    assert load_trace(write(tmp_path, "t.csv", selections_csv()), **DIMS) == EXPECTED


def test_three_forms_agree(tmp_path):
    a = load_trace(write(tmp_path, "a.jsonl", per_layer_jsonl()), **DIMS)
    b = load_trace(str(write(tmp_path, "b.jsonl", compact_jsonl())), **DIMS)
    c = load_trace(write(tmp_path, "c.csv", selections_csv()), **DIMS)
    assert a == b == c == EXPECTED
    assert all(isinstance(x, float) for row in a for x in row)
    assert all(abs(sum(row) - 2) < 1e-12 for row in a)


def test_jsonl_mixed_forms_blank_lines_and_uneven_token_counts(tmp_path):
    # Layer 0: [0,1] (compact), [0,2] (compact), [1,2] -> 3 tokens, counts 2,2,2 -> 2/3 each.
    # Layer 1: [2,0] (compact), [2,1] (compact)        -> 2 tokens, counts 1,1,2.
    text = ('{"experts": [[0, 1], [2, 0]]}\n\n   \n'
            '{"token": 9, "experts": [[0, 2], [2, 1]], "note": "ignored"}\r\n'
            '{"layer": 0, "experts": [1, 2], "token": 9}\n')
    q = load_trace(write(tmp_path, "t.jsonl", text), **DIMS)
    assert q == ((2 / 3, 2 / 3, 2 / 3), (1 / 2, 1 / 2, 2 / 2))


def test_csv_column_order_extra_columns_interleaved_rows_crlf_bom(tmp_path):
    # The same selections as SEL, columns reordered, an extra column, rows of one
    # (token, layer) not adjacent, CRLF line endings, a UTF-8 BOM, a blank line.
    rows = [(t, l, e) for l in range(2) for e_i in range(2) for t in range(4) for e in [SEL[t][l][e_i]]]
    text = "expert,weight,layer,token\r\n\r\n" + "".join(f"{e},0.5,{l},{t}\r\n" for t, l, e in rows)
    p = write(tmp_path, "T.CSV", b"\xef\xbb\xbf" + text.encode())
    assert load_trace(p, **DIMS) == EXPECTED


def test_top_k_one(tmp_path):
    p = write(tmp_path, "t.csv", "token,layer,expert\n0,0,1\n1,0,1\n2,0,0\n")
    assert load_trace(p, num_layers=1, num_experts=2, top_k=1) == ((1 / 3, 2 / 3),)


def test_custom_field_name(tmp_path):
    with pytest.raises(InputError) as info:
        load_trace(tmp_path / "absent.jsonl", field="workload.routing_trace", **DIMS)
    assert info.value.field == "workload.routing_trace"


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    msg = bad(tmp_path / "absent.jsonl")
    assert "file not found" in msg


def test_directory(tmp_path):
    (tmp_path / "d.jsonl").mkdir()
    assert "is a directory" in bad(tmp_path / "d.jsonl")


@pytest.mark.parametrize("name", ["t.json", "t.txt", "trace", "t.jsonl.gz"])
def test_unknown_suffix(tmp_path, name):
    msg = bad(write(tmp_path, name, compact_jsonl()))
    assert ".jsonl" in msg and ".csv" in msg


def test_not_utf8(tmp_path):
    p = write(tmp_path, "t.jsonl", compact_jsonl().encode() + b'{"experts": [[0, 1], [0, 2]], "x": "\xff"}\n')
    msg = bad(p)
    assert "line 5" in msg and "UTF-8" in msg


def test_empty_files(tmp_path):
    assert "no tokens" in bad(write(tmp_path, "t.jsonl", "\n  \n"))
    assert "empty" in bad(write(tmp_path, "t.csv", ""))
    assert "no tokens" in bad(write(tmp_path, "h.csv", "token,layer,expert\n"))


# --------------------------------------------------------------------------- bad JSONL


@pytest.mark.parametrize("line, words", [
    ('{"layer": 0, "experts": [0, 1]', ["line 3", "column", "not valid JSON"]),
    ("not json", ["line 3", "column 1", "not valid JSON"]),
    ("[[0, 1], [2, 0]]", ["line 3", "JSON object"]),
    ('"text"', ["line 3", "JSON object"]),
    ('{"layer": 0}', ["line 3", '"experts"']),
    ('{"token": 7}', ["line 3", '"experts"']),
    ('{"layer": "1", "experts": [0, 1]}', ["line 3", "layer", "integer"]),
    ('{"layer": 1.0, "experts": [0, 1]}', ["line 3", "layer", "integer"]),
    ('{"layer": true, "experts": [0, 1]}', ["line 3", "layer", "integer"]),
    ('{"layer": null, "experts": [0, 1]}', ["line 3", "layer", "integer"]),
    ('{"layer": 2, "experts": [0, 1]}', ["line 3", "layer 2", "out of range"]),
    ('{"layer": -1, "experts": [0, 1]}', ["line 3", "layer -1", "out of range"]),
    ('{"layer": 0, "experts": 1}', ["line 3", "list"]),
    ('{"layer": 0, "experts": [0, "1"]}', ["line 3", "expert", "integer"]),
    ('{"layer": 0, "experts": [0, 1.5]}', ["line 3", "expert", "integer"]),
    ('{"layer": 0, "experts": [0, false]}', ["line 3", "expert", "integer"]),
    ('{"layer": 0, "experts": [0, 3]}', ["line 3", "expert 3", "out of range"]),
    ('{"layer": 0, "experts": [-1, 0]}', ["line 3", "expert -1", "out of range"]),
    ('{"layer": 0, "experts": [1]}', ["line 3", "1 expert", "top_k = 2"]),
    ('{"layer": 0, "experts": [0, 1, 2]}', ["line 3", "3 expert", "top_k = 2"]),
    ('{"layer": 0, "experts": []}', ["line 3", "0 expert", "top_k = 2"]),
    ('{"layer": 1, "experts": [2, 2]}', ["line 3", "expert 2", "more than once"]),
    ('{"experts": [[0, 1]]}', ["line 3", "1 entries", "2"]),
    ('{"experts": [[0, 1], [0, 1], [0, 1]]}', ["line 3", "3 entries", "2"]),
    ('{"experts": [0, 1]}', ["line 3", "layer 0", "list"]),
    ('{"experts": {"0": [0, 1]}}', ["line 3", "list"]),
    ('{"experts": [[0, 1], [0, 3]]}', ["line 3", "layer 1", "expert 3", "out of range"]),
    ('{"experts": [[0, 1], [0]]}', ["line 3", "layer 1", "1 expert"]),
    ('{"experts": [[1, 1], [0, 2]]}', ["line 3", "layer 0", "more than once"]),
    ('{"experts": [[0, 1], [0, "x"]]}', ["line 3", "layer 1", "integer"]),
    ('{"layer": ' + "9" * 5000 + ', "experts": [0, 1]}', ["line 3", "not valid JSON"]),
    ("[" * 100000, ["line 3", "not valid JSON"]),
])
def test_bad_jsonl_line(tmp_path, line, words):
    # Two good lines, a blank one (lines 1-2 and 4 hold tokens, so the rest of the file is fine)...
    good = compact_jsonl().splitlines()
    text = good[0] + "\n" + good[1] + "\n" + line + "\n" + good[2] + "\n"
    msg = bad(write(tmp_path, "t.jsonl", text))
    for w in words:
        assert w in msg, (w, msg)


def test_jsonl_layer_without_tokens(tmp_path):
    text = "".join(json.dumps({"layer": 0, "experts": SEL[t][0]}) + "\n" for t in range(4))
    msg = bad(write(tmp_path, "t.jsonl", text))
    assert "layer 1" in msg and "no tokens" in msg


def test_jsonl_line_numbers_count_blank_lines(tmp_path):
    text = "\n\n" + compact_jsonl() + "\n\n" + '{"experts": [[0, 1], [1, 9]]}\n'
    assert "line 9" in bad(write(tmp_path, "t.jsonl", text))


def test_jsonl_line_separator_inside_a_string_does_not_shift_lines(tmp_path):
    # U+2028 is legal inside a JSON string; it must not count as a line break.
    text = '{"experts": [[0, 1], [0, 2]], "note": "a\u2028b"}\n{"experts": [[0, 1], [0, 7]]}\n'
    assert "line 2" in bad(write(tmp_path, "t.jsonl", text))


# --------------------------------------------------------------------------- bad CSV


@pytest.mark.parametrize("header, missing", [
    ("token,layer", ["'expert'"]),
    ("tok,layer,expert", ["'token'"]),
    ("expert", ["'token'", "'layer'"]),
    ("token,layer,experts", ["'expert'"]),
])
def test_csv_missing_columns(tmp_path, header, missing):
    msg = bad(write(tmp_path, "t.csv", header + "\n0,0,1\n"))
    assert "line 1" in msg
    for m in missing:
        assert m in msg


def test_csv_duplicate_column(tmp_path):
    msg = bad(write(tmp_path, "t.csv", "token,layer,expert,layer\n0,0,1,0\n"))
    assert "line 1" in msg and "'layer'" in msg


@pytest.mark.parametrize("row, words", [
    ("x,0,1", ["line 3", "'token'", "integer"]),
    ("0,one,1", ["line 3", "'layer'", "integer"]),
    ("0,0,1.0", ["line 3", "'expert'", "integer"]),
    ("0,0,", ["line 3", "'expert'", "integer"]),
    ("0,,1", ["line 3", "'layer'", "integer"]),
    ("0,0,1_0", ["line 3", "'expert'", "integer"]),
    ("0,0," + "1" * 5000, ["line 3", "'expert'", "integer"]),
    ("0,0", ["line 3", "'expert'", "missing"]),
    ("0,2,1", ["line 3", "layer 2", "out of range"]),
    ("0,-1,1", ["line 3", "layer -1", "out of range"]),
    ("0,0,3", ["line 3", "expert 3", "out of range"]),
    ("0,0,-2", ["line 3", "expert -2", "out of range"]),
    ('0,0,"1"x', ["line 3", "not valid CSV"]),
])
def test_bad_csv_row(tmp_path, row, words):
    text = "token,layer,expert\n9,1,0\n" + row + "\n9,1,1\n"
    msg = bad(write(tmp_path, "t.csv", text))
    for w in words:
        assert w in msg, (w, msg)


def test_csv_duplicate_selection(tmp_path):
    text = "token,layer,expert\n0,0,1\n0,1,1\n0,0,1\n"
    msg = bad(write(tmp_path, "t.csv", text))
    assert "line 4" in msg and "line 2" in msg and "more than once" in msg


def test_csv_too_few_experts_for_a_token(tmp_path):
    # token 1 at layer 0 has one row only (line 4).
    text = "token,layer,expert\n0,0,0\n0,0,1\n1,0,2\n0,1,0\n0,1,1\n"
    msg = bad(write(tmp_path, "t.csv", text))
    assert "line 4" in msg and "token 1" in msg and "layer 0" in msg and "top_k = 2" in msg


def test_csv_too_many_experts_for_a_token(tmp_path):
    text = "token,layer,expert\n0,0,0\n0,1,0\n0,0,1\n0,1,1\n0,0,2\n"
    msg = bad(write(tmp_path, "t.csv", text))
    assert "lines 2, 4, 6" in msg and "3 expert" in msg


def test_csv_layer_without_tokens(tmp_path):
    text = "token,layer,expert\n0,1,0\n0,1,1\n"
    msg = bad(write(tmp_path, "t.csv", text))
    assert "layer 0" in msg and "no tokens" in msg


def test_csv_not_utf8(tmp_path):
    msg = bad(write(tmp_path, "t.csv", b"token,layer,expert\n0,0,\xe9\n"))
    assert "line 2" in msg and "UTF-8" in msg


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("dims", [
    dict(num_layers=0, num_experts=3, top_k=2),
    dict(num_layers=2, num_experts=3, top_k=4),
    dict(num_layers=2, num_experts=3, top_k=0),
    dict(num_layers=2.0, num_experts=3, top_k=2),
])
def test_bad_dimensions(tmp_path, dims):
    bad(write(tmp_path, "t.jsonl", compact_jsonl()), **dims)


# --------------------------------------------------------------------------- the shipped trace


def test_shipped_mixtral_trace():
    q = load_trace(SHIPPED, num_layers=32, num_experts=8, top_k=2)
    assert len(q) == 32 and all(len(row) == 8 for row in q)
    for layer, row in enumerate(q):
        assert abs(sum(row) - 2) < 1e-12, layer
        shares = [x / 2 for x in row]
        assert 0.12 <= max(shares) <= 0.18, (layer, shares)
        assert 0.02 <= min(shares) <= 0.07, (layer, shares)


def test_shipped_trace_shape_and_size():
    assert SHIPPED.stat().st_size < 600_000
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2000
    first = json.loads(lines[0])
    assert first["token"] == 0 and len(first["experts"]) == 32
    assert " " not in lines[0]  # compact separators


def test_generator_reproduces_the_shipped_trace(tmp_path):
    out = tmp_path / "again.jsonl"
    proc = subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == SHIPPED.read_bytes()


@pytest.mark.slow
def test_ten_million_choices_load_in_bounded_memory(tmp_path):
    """A CSV trace of 10 million token choices (Mixtral: 32 layers, top-2; 156,250 tokens) loads
    in a process that stays under 1 GiB resident. Token t picks experts t % 8 and (t + 1) % 8 at
    every layer, so expert e is picked by the tokens with t % 8 in {e, e - 1}: 156,250 = 8 x 19,531
    + 2 tokens, t % 8 in {0, 1} occurring 19,532 times and the others 19,531 times."""
    tokens, layers = 156_250, 32
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("token,layer,expert\n")
        for t in range(tokens):
            a, b = t % 8, (t + 1) % 8
            f.write("".join(f"{t},{layer},{a}\n{t},{layer},{b}\n" for layer in range(layers)))
    root = Path(__file__).resolve().parents[1]
    # The peak of this process alone: Linux keeps ru_maxrss across execve, so a child of a large pytest
    # process reported the parent's size (1070 MiB once in CI); VmHWM belongs to the new program's memory.
    code = ("import json, resource, sys; from model.routing import load_trace; "
            f"q = load_trace({str(path)!r}, 32, 8, 2); "
            "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')] "
            "if sys.platform == 'linux' else []; "
            "print(json.dumps({'q0': q[0], 'q31': q[31], "
            "'rss_kib': hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    n = {r: 19_532 if r in (0, 1) else 19_531 for r in range(8)}
    want = [(n[e] + n[(e - 1) % 8]) / tokens for e in range(8)]
    assert out["q0"] == pytest.approx(want, rel=1e-12) and out["q31"] == pytest.approx(want, rel=1e-12)
    assert out["rss_kib"] < 1024 * 1024, f"{out['rss_kib'] / 1024:.0f} MiB resident"
