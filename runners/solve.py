"""python -m runners.solve SCENARIO.yaml [flags]: the throughput-optimal policy, or one policy evaluated.

Flags override the scenario file (the original script's flags). Fixing all of
--gpu-batch-size, --num-gpu-batches and --percent evaluates that policy; fixing
some optimizes the rest. --expert-traffic, --pin-experts/--no-pin-experts,
--cpu-experts/--no-cpu-experts and --routing FILE set the scenario's ``experts:``
section (README "Expert-aware policies"); with pinning or CPU experts on, a fully
fixed policy still optimizes those decisions.

Output (stdout):

    --format text    the readable report (the default)
    --format json    one JSON object, model.report.to_json (docs/model.md section 13); --json is the same
    --format yaml    the same object as YAML (yaml.safe_dump, keys in the JSON's order)
    --flexllmgen     instead of a report, one command line of FlexGen's MoE fork that runs the
                     policy: python -m MODULE --model ID --path DIR --prompt-len S --gen-len N
                     --gpu-batch-size G --num-gpu-batches N' --percent WG WC CG CC HG HC
                     [--cpu-cache-compute] [--compress-weight], with the integer percents that
                     fit (N' < N when none fit at N; model.report.flexllmgen_flags);
                     --cpu-cache-compute exactly when the policy attends KV cache on the CPU

The FlexLLMGen model id is ``--flexllmgen-model`` when given, else the Hugging Face
repo id recorded as ``"_source"`` (or ``"_name_or_path"``) in the scenario's
``model.hf_config`` JSON, else mistralai/Mixtral-8x7B-v0.1 when the scenario's
architecture numbers are Mixtral-8x7B's (t4_reference, a100_16g). The entry-point
module (``--flexllmgen-module``) defaults to ``flexgen.flex_moe`` of FlexGen's MoE fork
(lynnliu030/FlexGen, branch moe, checked at commit a80c8d1: its ``add_parser_arguments``
takes every flag printed here; none is required; ``--model`` defaults to an OPT model, so it
is always printed). That module cannot load compressed MoE weights (``init_weight_list_moe``
has no compressed path), so a compressed scenario gets no command line for it (exit 2).

Exit status: 0 a policy was found or evaluated; 1 infeasible, or no policy
(solver failure, time limit without one), or --flexllmgen and no integer percents
fit; 2 bad input (one line on stderr naming the field or flag and the value).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import pyomo.environ as pyo
import yaml

from model import Infeasible, InputError, SolverError, evaluate_policy, load_scenario, optimize
from model.optimize import build_for
from model.report import flexllmgen_flags, to_json, to_text
from runners.cli import OneLineParser, add_debug_flag, input_error_line, main_guard, say, stdout_closed

# flag -> scenario field it overrides
FLAG_FIELDS = {
    "prompt_len": ("--prompt-len", "workload.prompt_len"),
    "gen_len": ("--gen-len", "workload.gen_len"),
    "gpu_mem": ("--gpu-mem", "hardware.memory_gib.gpu"),
    "cpu_mem": ("--cpu-mem", "hardware.memory_gib.cpu"),
    "nvme_mem": ("--nvme-mem", "hardware.memory_gib.disk"),
    "gpu_batch_size": ("--gpu-batch-size", "policy.gpu_batch_size"),
    "num_gpu_batches": ("--num-gpu-batches", "policy.num_gpu_batches"),
    "percent": ("--percent", "policy.percent"),
    "alpha_g": ("--alpha-g", "hardware.alpha.gpu"),
    "alpha_c": ("--alpha-c", "hardware.alpha.cpu"),
    "alpha_n": ("--alpha-n", "hardware.alpha.disk"),
    "solver": ("--solver", "solver.name"),
    "time_limit": ("--time-limit", "solver.time_limit_s"),
    "mip_gap": ("--mip-gap", "solver.mip_gap"),
    "threads": ("--threads", "solver.threads"),
    "expert_traffic": ("--expert-traffic", "experts.expert_traffic"),
    "pin_experts": ("--pin-experts", "experts.pin_experts"),
    "cpu_experts": ("--cpu-experts", "experts.cpu_experts"),
    "routing": ("--routing", "experts.routing_trace"),
    "attention": ("--attention", "policy.attention"),
}


FORMATS = ("text", "json", "yaml")

# FlexGen MoE fork command line (--flexllmgen): lynnliu030/FlexGen, branch moe, commit a80c8d1
FLEXLLMGEN_MODULE = "flexgen.flex_moe"      # the fork's MoE entry point (flexgen/flex_moe.py, add_parser_arguments)
FORK = "FlexGen's MoE fork (lynnliu030/FlexGen, branch moe, a80c8d1)"
FLEXLLMGEN_PATH = "_DUMMY_"                 # FlexLLMGen's --path value for dummy weights (throughput runs)
MIXTRAL_8X7B_ID = "mistralai/Mixtral-8x7B-v0.1"
MIXTRAL_8X7B_NUMBERS = {"num_layers": 32, "hidden_size": 4096, "intermediate_size": 14336,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                        "num_experts": 8, "num_experts_per_token": 2, "vocab_size": 32000}
HF_ID_KEYS = ("_source", "_name_or_path")   # where a config.json records its Hugging Face repo id
FLEXLLMGEN_COMPRESSION = (4, 64)            # --compress-weight: FlexLLMGen's 4-bit, group-64 quantization


def _family_keys():
    from model.keys import family_keys

    return family_keys()


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m runners.solve",
                description="Find the throughput-optimal offloading policy for a MoE model (or evaluate one).",
                epilog="Memory sizes are GiB (2^30 bytes). Exit status: 0 policy found or evaluated, "
                       "1 infeasible or no policy, 2 bad input.")
    p.add_argument("scenario", help="scenario YAML file, e.g. scenarios/a100_16g.yaml")
    g = p.add_argument_group("workload and hardware overrides")
    g.add_argument("--prompt-len", type=int, metavar="N", help="prompt length s (tokens)")
    g.add_argument("--gen-len", type=int, metavar="N", help="generation length n (tokens)")
    g.add_argument("--gpu-mem", type=float, metavar="GIB", help="GPU memory, GiB")
    g.add_argument("--cpu-mem", type=float, metavar="GIB", help="CPU memory, GiB")
    g.add_argument("--nvme-mem", type=float, metavar="GIB", help="disk (NVMe) capacity, GiB")
    g.add_argument("--alpha-g", type=float, metavar="X", help="usable share of GPU memory (default 0.8)")
    g.add_argument("--alpha-c", type=float, metavar="X", help="usable share of CPU memory (default 0.9)")
    g.add_argument("--alpha-n", type=float, metavar="X", help="usable share of disk (default 0.8)")
    g.add_argument("--compress-w", action="store_true", help="4-bit weight compression (reference: bytes / 4)")
    g = p.add_argument_group("policy (fix any part; all three evaluate that policy)")
    g.add_argument("--gpu-batch-size", type=int, metavar="N", help="fix the GPU batch size g")
    g.add_argument("--num-gpu-batches", type=int, metavar="N", help="fix the number of GPU batches N")
    g.add_argument("--percent", type=float, nargs=6, metavar=("WG", "WC", "CG", "CC", "HG", "HC"),
                   help="fix placement percents as FlexLLMGen's --percent (disk takes the rest)")
    g.add_argument("--attention", choices=("cpu", "gpu", "auto"),
                   help="where decode attends the KV cache held off the GPU: cpu (FlexGen's --cpu-cache-compute), "
                        "gpu (copied to the GPU every step, FlexGen's default) or auto (default: the faster)")
    g = p.add_argument_group("expert-aware policies (README: Expert-aware policies)")
    g.add_argument("--expert-traffic", choices=("all", "expected"),
                   help="decode moves every expert of a layer (all: the reference's assumption) or only those "
                        "that the block's tokens route to (expected: sum_e 1-(1-q_e)^b per layer)")
    g.add_argument("--pin-experts", action=argparse.BooleanOptionalAction, default=None,
                   help="let the solver keep chosen (layer, expert) weights resident on the GPU")
    g.add_argument("--cpu-experts", action=argparse.BooleanOptionalAction, default=None,
                   help="let the solver compute chosen (layer, expert) on the CPU in decode "
                        "(needs hardware.tflops.cpu_gemv and cpu_gemm)")
    g.add_argument("--routing", metavar="FILE",
                   help="routing trace (.csv or .jsonl of per-token expert choices, scenarios/traces/README.md): "
                        "per-layer expert probabilities are counted from it")
    keys = [k for k in _family_keys() if k.flag]
    if keys:
        g = p.add_argument_group("constraint families (their own scenario keys)")
        for k in keys:
            kind = k.type if k.type in (int, float, str) else next(
                (t for t in getattr(k.type, "__args__", ()) if t in (int, float, str)), str)
            g.add_argument(k.flag, type=kind, metavar=k.metavar or "X", choices=k.choices,
                           help=f"{k.doc} (scenario key {k.path})")
    g = p.add_argument_group("any scenario field")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any scenario field by its dotted path, e.g. --set hardware.alpha.gpu=0.9 "
                        "(repeatable; the value is read as YAML; relative paths from the working directory)")
    g.add_argument("--model", metavar="ID_OR_CONFIG",
                   help="replace the scenario's model by a shipped config (a Hugging Face id such as "
                        "mistralai/Mixtral-8x7B-Instruct-v0.1; base and instruct variants share one) or a "
                        "config.json path, with exact accounting")
    g = p.add_argument_group("solver")
    g.add_argument("--solver", metavar="NAME", help="MIP solver (default: highs)")
    g.add_argument("--time-limit", type=float, metavar="S", help="solver time limit, seconds")
    g.add_argument("--mip-gap", type=float, metavar="X", help="relative MIP gap (default 1e-4)")
    g.add_argument("--threads", type=int, metavar="N", help="solver threads")
    g = p.add_argument_group("output")
    g.add_argument("--format", choices=FORMATS, default=None,
                   help="text: the readable report (default); json: one JSON object (docs/model.md section 13); "
                        "yaml: the same object as YAML")
    g.add_argument("--json", action="store_true", help="the same as --format json")
    g.add_argument("--flexllmgen", action="store_true",
                   help=f"print, instead of the report, one command line of {FORK} that runs the policy "
                        "(integer percents that fit; --cpu-cache-compute when it attends KV cache on the CPU; "
                        "--compress-weight when model.compress_weights is set and the module is not the fork's); "
                        "exit 1 when no integer percents fit")
    g.add_argument("--flexllmgen-module", metavar="MODULE", default=FLEXLLMGEN_MODULE,
                   help=f"Python module of the MoE entry point (default {FLEXLLMGEN_MODULE}, flexgen/flex_moe.py "
                        "of the fork; upstream FlexLLMGen has no MoE module)")
    g.add_argument("--flexllmgen-model", metavar="ID",
                   help="the --model value (a Hugging Face repo id). Default: the \"_source\" (else "
                        "\"_name_or_path\") recorded in the scenario's model.hf_config JSON; else "
                        f"{MIXTRAL_8X7B_ID} when the scenario's architecture numbers are Mixtral-8x7B's "
                        "(scenarios/t4_reference.yaml, scenarios/a100_16g.yaml); otherwise this flag is required")
    g.add_argument("--flexllmgen-path", metavar="DIR", default=FLEXLLMGEN_PATH,
                   help=f"the --path value: FlexLLMGen's weight directory (default {FLEXLLMGEN_PATH}, "
                        "its dummy weights for throughput runs)")
    g.add_argument("--write-model", metavar="FILE", type=str,
                   help="write the MILP to FILE.lp or FILE.mps (readable names) and exit without solving")
    add_debug_flag(p)
    return p


def family_flags() -> dict[str, tuple[str, str]]:
    """Flags that the constraint families declare with their scenario keys (model.keys)."""
    from model.keys import family_keys

    return {k.flag.lstrip("-").replace("-", "_"): (k.flag, k.path) for k in family_keys() if k.flag}


def all_flag_fields() -> dict[str, tuple[str, str]]:
    return {**FLAG_FIELDS, **family_flags()}


def parse_sets(items: list[str]) -> dict:
    """``--set dotted.key=value`` pairs (the value read as YAML: numbers, lists, true/false, null).
    Relative paths in path fields resolve against the working directory."""
    from model.scenario import PATH_FIELDS, is_preset_path

    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not part.isidentifier() for part in key.split(".")):
            raise InputError("--set", item, "expected dotted.key=value, e.g. --set workload.gen_len=64")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise InputError(f"--set {key}", text, "the value is not valid YAML") from None
        if key in PATH_FIELDS and isinstance(value, str) and value.strip() and (
                key != "hardware.preset" or is_preset_path(value)):
            value = str(Path(value).expanduser().resolve())
        if key in out:
            raise InputError("--set", key, "given twice")
        out[key] = value
    return out


def overrides_from(args) -> dict:
    out = {}
    if args.model is not None:
        from model.hf_config import resolve_model

        out["model"] = {"hf_config": str(resolve_model(args.model)), "accounting": "exact"}
    sets = parse_sets(args.set or [])
    for attr, (flag, field) in all_flag_fields().items():
        value = getattr(args, attr)
        if value is not None:
            if field in sets:
                raise InputError(flag, value, f"is also given as --set {field}: give one of them")
            out[field] = list(value) if isinstance(value, list) else value
    for key in sets:
        if args.model is not None and (key == "model" or key.startswith("model.hf_config")):
            raise InputError("--model", args.model, f"is also given as --set {key}: give one of them")
    out.update(sets)
    if args.compress_w:
        out["model.compress_weights"] = True
    if args.routing is not None:
        out["experts.routing_trace"] = str(Path(args.routing).resolve()) if args.routing.strip() else args.routing
        out["experts.routing_probabilities"] = None   # the trace replaces rows given in the file
    return out


def _flag_for(field: str) -> str:
    for flag, fld in all_flag_fields().values():
        if field.startswith(fld):
            return f"{flag} ({field})"
    return field


def write_model(sc, path: str) -> int:
    """Write the MILP that optimize() would solve, with symbolic names, as LP or MPS."""
    fmt = {".lp": "lp", ".mps": "mps"}.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError("--write-model", path, "the file name must end in .lp or .mps")
    m = build_for(sc)
    try:
        m.write(path, io_options={"symbolic_solver_labels": True})
    except OSError as exc:
        raise InputError("--write-model", path, f"cannot write ({exc.strerror or exc})") from None
    nvars = sum(1 for _ in m.component_data_objects(pyo.Var, active=True))
    ncons = sum(1 for _ in m.component_data_objects(pyo.Constraint, active=True))
    print(f"wrote {path}: {ncons} constraints, {nvars} variables ({fmt.upper()}, symbolic names)")
    return 0


def output_format(p: argparse.ArgumentParser, args) -> str:
    """``text``, ``json``, ``yaml`` or ``flexllmgen`` from the output flags (a conflict is a usage error)."""
    if args.json and args.format not in (None, "json"):
        p.error(f"--json conflicts with --format {args.format}")
    fmt = args.format or ("json" if args.json else "text")
    if args.flexllmgen:
        if args.format is not None or args.json:
            p.error("--flexllmgen prints a command line instead of the report: "
                    "it cannot be combined with --format or --json")
        if args.write_model is not None:
            p.error("--flexllmgen cannot be combined with --write-model")
        return "flexllmgen"
    return fmt


def emit(obj: dict, fmt: str) -> None:
    """Print ``obj`` (the to_json object, or a status object) as JSON or YAML; nothing for text.
    A reader that closed stdout is tolerated quietly (the exit status stays the work's)."""
    try:
        if fmt == "json":
            print(json.dumps(obj, indent=2), flush=True)
        elif fmt == "yaml":
            # through JSON: plain lists, str keys and float values, exactly the --json object
            print(yaml.safe_dump(json.loads(json.dumps(obj)), sort_keys=False), end="", flush=True)
    except BrokenPipeError:
        stdout_closed()


def flexllmgen_model_id(sc) -> str | None:
    """The Hugging Face repo id for FlexLLMGen's --model, or None when the scenario does not say."""
    spec = sc.model
    if spec.hf_config is not None:
        from model.hf_config import _load   # the input layer: a FIFO or a bad file is bad input, not a hang

        cfg = _load(Path(spec.hf_config))
        if isinstance(cfg, dict):
            for key in HF_ID_KEYS:
                value = cfg.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
        return None
    if all(getattr(spec, k, None) == v for k, v in MIXTRAL_8X7B_NUMBERS.items()):
        return MIXTRAL_8X7B_ID
    return None


def check_flexllmgen(sc, args) -> str:
    """The --model id for --flexllmgen (InputError when none is known or the compression has no flag)."""
    model_id = args.flexllmgen_model
    if model_id is not None and not model_id.strip():
        raise InputError("--flexllmgen-model", model_id, "must not be empty")
    if model_id is None:
        model_id = flexllmgen_model_id(sc)
    if model_id is None:
        where = (f'model.hf_config {sc.model.hf_config} records no "_source" or "_name_or_path"'
                 if sc.model.hf_config is not None else "the architecture numbers are not Mixtral-8x7B's")
        raise InputError("--flexllmgen-model", None,
                         f"no Hugging Face model id is known for this scenario ({where}); give --flexllmgen-model ID")
    cw = sc.model.compress_weights
    if cw is not None and args.flexllmgen_module == FLEXLLMGEN_MODULE:
        raise InputError("model.compress_weights", {"bits": cw.bits, "group_size": cw.group_size},
                         f"{FORK} cannot load compressed MoE weights (flex_moe.init_weight_list_moe has no "
                         "compressed path); give --flexllmgen-module for a runtime that can")
    if cw is not None and (cw.bits, cw.group_size) != FLEXLLMGEN_COMPRESSION:
        raise InputError("model.compress_weights", {"bits": cw.bits, "group_size": cw.group_size},
                         "FlexLLMGen's --compress-weight is 4-bit with group size 64; "
                         "this compression has no FlexLLMGen flag")
    return model_id.strip()


def flexllmgen_command(res, args, model_id: str) -> str | None:
    """One FlexLLMGen command line for ``res``'s policy, or None when no integer percents fit."""
    flags = flexllmgen_flags(res)
    if flags is None:
        return None
    sc = res.scenario
    head = ["python", "-m", args.flexllmgen_module, "--model", model_id, "--path", args.flexllmgen_path,
            "--prompt-len", str(sc.workload.prompt_len), "--gen-len", str(sc.workload.gen_len)]
    tail = " --compress-weight" if sc.model.compress_weights is not None else ""
    if res.attention == "cpu" and res.flexllmgen_percent[2] < 100:
        # the policy attends CPU- and disk-held KV cache on the CPU (--cpu-cache-compute); without
        # the flag the fork copies that cache to the GPU each step (policy.attention: gpu). With all
        # of the cache on the GPU nothing attends on the CPU, and the flag would make the fork copy
        # it to the CPU (SelfAttention.load_cache, path 1): no flag.
        tail += " --cpu-cache-compute"
    return f"{shlex.join(head)} {flags}{tail}"


def run(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    fmt = output_format(p, args)
    overrides = overrides_from(args)
    try:
        sc = load_scenario(args.scenario, overrides)
        if args.write_model is not None:   # '' too: a bad file name, not "no flag"
            return write_model(sc, args.write_model)
        if fmt == "flexllmgen":
            model_id = check_flexllmgen(sc, args)
        pol = sc.policy
        if pol.gpu_batch_size and pol.num_gpu_batches and pol.percent is not None \
                and not (sc.experts.pin_experts or sc.experts.cpu_experts):
            res = evaluate_policy(sc, pol.gpu_batch_size, pol.num_gpu_batches, pol.percent)
        else:
            res = optimize(sc)
    except InputError as exc:
        field = _flag_for(exc.field) if exc.field in overrides or any(
            exc.field.startswith(f) for f in overrides) else exc.field
        say(input_error_line(exc, field))
        return 2
    except Infeasible as exc:
        emit({"status": "infeasible", "infeasible": exc.reasons}, fmt)
        for reason in exc.reasons:
            say(f"infeasible: {reason}")
        return 1
    except SolverError as exc:
        emit({"status": "error", "error": str(exc)}, fmt)
        say(f"error: {exc}")
        return 1
    if fmt == "flexllmgen":
        return print_flexllmgen(res, args, model_id)
    if fmt == "text":
        print(to_text(res))
    else:
        emit(to_json(res), fmt)
    if res.status == "infeasible":
        for reason in res.infeasible_reasons:
            say(f"infeasible: {reason}")
        return 1
    return 0


def print_flexllmgen(res, args, model_id: str) -> int:
    """--flexllmgen: the command line on stdout (exit 0), or one line on stderr (exit 1)."""
    if res.status == "infeasible":
        for reason in res.infeasible_reasons:
            say(f"infeasible: {reason}")
        return 1
    cmd = flexllmgen_command(res, args, model_id)
    if cmd is None:
        why = ("the fixed --percent / policy.percent are not integers" if res.solve is None
               else f"no integer percents fit at gpu_batch_size={res.gpu_batch_size} with any num_gpu_batches")
        say(f"error: no FlexLLMGen command line: {why} (FlexLLMGen's --percent takes integers)")
        return 1
    print(cmd)
    if res.pinned_experts or res.cpu_experts:
        say(f"note: FlexLLMGen has no flags for pinned ({len(res.pinned_experts)}) or CPU-computed "
            f"({len(res.cpu_experts)}) experts: this command runs the batch sizes and placement only")
    if res.status not in ("optimal", "evaluated"):
        say(f"note: the solver stopped early ({res.status}): the policy is the best found, not proven optimal")
    return 0


def main(argv: list[str] | None = None) -> None:
    main_guard(run, argv)


if __name__ == "__main__":
    main()
