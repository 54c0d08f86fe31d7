"""Turn a :class:`~model.optimize.Result` into the JSON contract (docs/model.md section 13) or a text report."""

from __future__ import annotations

from typing import Any

from .optimize import Result
from .terms import COMPONENT_NAMES, COMPONENTS, DEVICES, PHASES, TENSOR_KINDS

_LABEL = {"gpu": "GPU", "cpu": "CPU", "disk": "disk"}
MAX_GROUPS_SHOWN = 6   # distinct layer groups in the text report's per-layer table


def _distinct_groups(groups) -> list[tuple[Any, str, int]]:
    """Layer groups with identical per-layer times merged: (group, label, layer count)."""
    out: list[list] = []
    for gt in groups:
        key = tuple(round(gt.layer_time_s[ph][c], 12) for ph in PHASES for c in COMPONENTS)
        for row in out:
            if row[3] == key:
                row[1].append(gt.name)
                row[2] += gt.count
                break
        else:
            out.append([gt, [gt.name], gt.count, key])
    return [(gt, names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}", count)
            for gt, names, count, _key in out]


def flexllmgen_flags(res: Result) -> str | None:
    """FlexLLMGen's command-line flags for the policy (integer percents that fit), or None."""
    if res.flexllmgen_percent is None or res.gpu_batch_size is None:
        return None
    pct = " ".join(str(int(x)) for x in res.flexllmgen_percent)
    return f"--gpu-batch-size {res.gpu_batch_size} --num-gpu-batches {res.flexllmgen_num_gpu_batches} --percent {pct}"


def experts_settings(res: Result) -> dict[str, Any]:
    """The expert-aware switches in effect and where the routing probabilities came from."""
    ex = res.scenario.experts
    if ex.routing_trace is not None:
        routing = f"trace {ex.routing_trace}"
    elif ex.routing_probabilities is not None:
        routing = "per layer (experts.routing_probabilities)"
    elif res.scenario.model.routing_probabilities is not None:
        routing = "model.routing_probabilities in every layer"
    else:
        routing = "uniform"
    return {"expert_traffic": ex.expert_traffic, "pin_experts": ex.pin_experts, "cpu_experts": ex.cpu_experts,
            "routing": routing}


def _pairs_text(pairs: list[list[int]], num_experts: int) -> str:
    """``L0-31: all  L32: 0,5``: layers with the same experts merged into ranges of consecutive layers."""
    by_layer: dict[int, list[int]] = {}
    for layer, e in pairs:
        by_layer.setdefault(layer, []).append(e)
    runs: list[list] = []   # [first layer, last layer, experts text]
    for layer, es in sorted(by_layer.items()):
        text = "all" if len(es) == num_experts else ",".join(map(str, sorted(es)))
        if runs and runs[-1][1] == layer - 1 and runs[-1][2] == text:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer, text])
    return "  ".join(f"L{a}{'' if a == b else f'-{b}'}: {t}" for a, b, t in runs)


def _compact(names: list[str], res: Result) -> list[str]:
    """Constraint names with per-layer group names folded: ``timing.x['moe.*',comp] (32 layer groups)``."""
    groups = [g.name for g in res.accounting.groups]
    if len(groups) <= MAX_GROUPS_SHOWN:
        return list(names)
    folded: dict[str, int] = {}
    for name in names:
        key = name
        for grp in groups:
            if f"'{grp}'" in name and "." in grp:
                key = name.replace(f"'{grp}'", f"'{grp.rsplit('.', 1)[0]}.*'")
                break
        folded[key] = folded.get(key, 0) + 1
    return [k if n == 1 else f"{k} ({n} layer groups)" for k, n in folded.items()]


def _experts_text(res: Result) -> list[str]:
    st = experts_settings(res)
    if not (res.expert_setup or res.scenario.experts.routing_trace or res.scenario.experts.routing_probabilities):
        return []
    lines = [f"Experts     traffic {st['expert_traffic']}, pinning {'on' if st['pin_experts'] else 'off'}, "
             f"CPU experts {'on' if st['cpu_experts'] else 'off'}; routing {st['routing']}"]
    moved = res.expected_experts_moved_per_layer
    if moved:
        lo, hi = min(moved.values()), max(moved.values())
        span = f"{lo:.3f}" if abs(hi - lo) < 5e-4 else f"{lo:.3f} .. {hi:.3f}"
        lines.append(f"            experts moved per layer and decode step (expected, at b={res.block_size}): {span}")
    for label, pairs in (("pinned on the GPU", res.pinned_experts), ("computed on the CPU", res.cpu_experts)):
        if st["pin_experts" if label.startswith("pinned") else "cpu_experts"]:
            num = len(res.accounting.expert_groups[0].routing) if res.accounting.expert_groups else 0
            lines.append(f"            {label}: {len(pairs)}" + (f"  [{_pairs_text(pairs, num)}]" if pairs else ""))
    return lines + [""]


def family_settings(res: Result) -> dict[str, Any]:
    """The scenario keys that the constraint families declare (model.keys), with their values."""
    from .keys import family_keys
    from .scenario import field_value

    return {k.path: field_value(res.scenario, k.path) for k in family_keys()}


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def to_json(res: Result) -> dict[str, Any]:
    """The ``--json`` object."""
    sc = res.scenario
    out: dict[str, Any] = {
        "status": res.status,
        "scenario": sc.name,
        "model": res.model_info,
        "workload": {"prompt_len": sc.workload.prompt_len, "gen_len": sc.workload.gen_len},
        "hardware": {"name": sc.hardware.name, "preset": sc.hardware.preset, "source": sc.hardware.source},
        "capacity_gib": res.capacity_gib,
        "usable_gib": res.usable_gib,
        "throughput_tokens_per_s": res.throughput_tokens_per_s,
    }
    moved = res.expected_experts_moved_per_layer
    if moved is not None:
        out["model"] = {**out["model"], "moe_layers": sorted(moved),
                        "expected_experts_moved_per_layer": [moved[layer] for layer in sorted(moved)]}
    out["experts"] = experts_settings(res)
    out["family_settings"] = family_settings(res)
    if res.evaluation is not None:
        out["block_time_s"] = res.evaluation.total_s   # every request's latency: a block finishes together
    if res.gpu_batch_size is not None:
        out["policy"] = {
            "gpu_batch_size": res.gpu_batch_size,
            "num_gpu_batches": res.num_gpu_batches,
            "block_size": res.block_size,
            "placement": {k: {d: res.fractions[(k, d)] for d in DEVICES} for k in TENSOR_KINDS},
            "pinned_experts": res.pinned_experts,
            "cpu_experts": res.cpu_experts,
            "attention": res.attention,
            "attention_requested": res.attention_requested or res.attention,
            "attention_tokens_per_s": res.attention_throughputs,
        }
    ev = res.evaluation
    if ev is not None:
        out["time_s"] = {
            "prefill_total": ev.prefill_total_s,
            "decode_total": ev.decode_total_s,
            "total": ev.total_s,
            "prefill_layer": dict(ev.layer_time_s["prefill"]),
            "decode_layer": dict(ev.layer_time_s["decode"]),
            "prefill_layer_total": ev.prefill_layer_s,
            "decode_layer_total": ev.decode_layer_s,
            "bottleneck": dict(ev.bottleneck),
            "block": ev.total_s,
            "layer_groups": [
                {"name": gt.name, "count": gt.count, "prefill_layer": dict(gt.layer_time_s["prefill"]),
                 "decode_layer": dict(gt.layer_time_s["decode"]), "prefill_layer_total": gt.prefill_layer_s,
                 "decode_layer_total": gt.decode_layer_s, "bottleneck": dict(gt.bottleneck)}
                for gt in ev.groups],
        }
        pk = ev.peak_memory_gib
        out["peak_memory_gib"] = {
            "gpu": {ph: pk[("gpu", ph)] for ph in PHASES},
            "cpu": {ph: pk[("cpu", ph)] for ph in PHASES},
            "disk": pk[("disk", None)],
        }
    if res.solve is not None:
        s = res.solve
        out["solver"] = {
            "name": s.solver, "version": s.version, "termination": s.termination,
            "objective_s_per_sequence": s.objective, "bound_s_per_sequence": s.bound, "gap": s.gap,
            "seconds": s.wall_s, "build_seconds": res.build_s,
            "resolve_seconds": res.resolve.wall_s if res.resolve else None,
            "total_seconds": res.total_s,
        }
    else:
        out["solver"] = {"name": None, "seconds": 0.0, "termination": res.status, "total_seconds": res.total_s}
    if res.bounds is not None:
        b = res.bounds
        out["search_bounds"] = {"gpu_batch_size": [b.g_lo, b.g_hi], "num_gpu_batches": [b.N_lo, b.N_hi],
                                "block_size_max": b.b_hi, "source": dict(b.source),
                                "binding": list(res.binding_bounds)}
    if res.sensitivity is not None:
        sn = res.sensitivity
        out["sensitivity"] = {"tokens_per_s_per_gib": dict(sn.tokens_per_s_per_gib),
                              "tokens_per_s_per_gib_per_s": dict(sn.tokens_per_s_per_gib_per_s),
                              "binding_constraints": list(sn.binding), "capped_by": list(res.capped_by),
                              "per_field": dict(sn.per_field), "note": sn.note}
    flags = flexllmgen_flags(res)
    out["flexllmgen"] = None if flags is None else {
        "gpu_batch_size": res.gpu_batch_size, "num_gpu_batches": res.flexllmgen_num_gpu_batches,
        "percent": list(res.flexllmgen_percent), "throughput_tokens_per_s": res.flexllmgen_throughput,
        "flags": flags,
    }
    if res.infeasible_reasons:
        out["infeasible"] = list(res.infeasible_reasons)
    out["notes"] = list(res.notes)
    return out


def _attention_text(res: Result) -> str:
    """Where decode attends the off-GPU KV cache, and (auto) both modes' throughputs."""
    from .attention import MODE_NAMES

    text = MODE_NAMES[res.attention]
    if res.attention_throughputs:
        both = ", ".join(f"{m.upper()} " + ("infeasible" if t is None else f"{t:.4f}")
                         for m, t in res.attention_throughputs.items())
        text += f"; auto: the faster of {both} tokens/s"
    return text


def to_text(res: Result) -> str:
    """A readable report: policy, throughput, time breakdown, memory, solver, FlexLLMGen flags."""
    sc, acc, ev = res.scenario, res.accounting, res.evaluation
    mi = res.model_info
    layers = " + ".join(f"{c} {g}" for g, c in mi["layers"].items())
    lines = [
        f"Scenario  {sc.name}: prompt {sc.workload.prompt_len}, generation {sc.workload.gen_len}",
        f"Model     {mi['name']} ({mi['model_type']}, {acc.mode} accounting): "
        f"{mi['total_parameters'] / 1e9:.2f} B parameters, {mi['active_parameters_per_token'] / 1e9:.2f} B "
        f"active per token; {layers} layers",
        f"          weights {mi['weights_gib']:.2f} GiB placed by the policy"
        + (f" + {mi['gpu_resident_gib']:.2f} GiB resident on the GPU (embeddings, LM head)"
           if mi["gpu_resident_gib"] else "")
        + f"; KV cache {mi['kv_cache_bytes_per_token'] / 1024:.0f} KiB per token",
        f"Hardware  {sc.hardware.name}: GPU {res.capacity_gib['gpu']:g} / CPU {res.capacity_gib['cpu']:g} / "
        f"disk {res.capacity_gib['disk']:g} GiB"
        + (f"; preset {sc.hardware.preset}" if sc.hardware.preset else ""),
        "",
    ]
    if res.solve is not None and res.status not in ("optimal", "evaluated"):
        gap = "unknown" if res.solve.gap is None else f"{100 * res.solve.gap:.2f}%"
        lines += [f"NOTE: the solver stopped early ({res.status}): this is the best policy found, "
                  f"not proven optimal; gap to the best bound {gap}.", ""]
    if res.gpu_batch_size is not None:
        lines += [
            f"Policy ({res.status})",
            f"  GPU batch size     {res.gpu_batch_size}",
            f"  GPU batches        {res.num_gpu_batches}   (block of {res.block_size} sequences)",
            f"  attention          {_attention_text(res)}",
            "  placement             GPU       CPU      disk",
        ]
        for k in TENSOR_KINDS:
            cells = "".join(f"{100 * res.fractions[(k, d)]:9.2f}%" for d in DEVICES)
            lines.append(f"    {k:<15}{cells}")
        lines.append("")
    lines += _experts_text(res)
    if ev is not None:
        lines += [
            f"Throughput  {ev.throughput_tokens_per_s:.4f} generated tokens/s",
            f"Time        prefill {ev.prefill_total_s:.4f} s + decode {ev.decode_total_s:.4f} s "
            f"= {ev.total_s:.4f} s per block",
            f"Latency     first results after {_duration(ev.total_s)}: every sequence of the block of "
            f"{res.block_size:,} finishes together" + (
                f" (limit {_duration(res.scenario.workload.max_block_time_s)})"
                if getattr(res.scenario.workload, "max_block_time_s", None) else ""),
            "",
            "Per layer (s)   " + "".join(f"{c:>11}" for c in COMPONENTS) + "      layer  bottleneck",
        ]
        shown = _distinct_groups(ev.groups)
        several = len(ev.groups) > 1
        for gt, label, count in shown[:MAX_GROUPS_SHOWN]:
            if several:
                lines.append(f"  {label} ({count} layer{'s' if count > 1 else ''})")
            for ph in PHASES:
                t = gt.layer_time_s[ph]
                layer = gt.prefill_layer_s if ph == "prefill" else gt.decode_layer_s
                neck_name = ev.chain_words.get(gt.bottleneck[ph], gt.bottleneck[ph])
                lines.append(f"  {ph:<14}" + "".join(f"{t[c]:11.5f}" for c in COMPONENTS)
                             + f" {layer:10.5f}  {neck_name}")
        if len(shown) > MAX_GROUPS_SHOWN:
            lines.append(f"  ... {len(shown) - MAX_GROUPS_SHOWN} more distinct layer groups (--format json lists all)")
        lines.append(f"  (prefill = {ev.formula['prefill']}; decode step = {ev.formula['decode']})")
        lines.append("  (" + ", ".join(f"{c} = {COMPONENT_NAMES[c]}" for c in COMPONENTS) + ")")
        lines += ["", "Peak memory (GiB)    prefill     decode     usable"]
        alpha = sc.hardware.alpha
        for d in DEVICES:
            cap = res.capacity_gib[d]
            use = f"{res.usable_gib[d]:9.4f} = {getattr(alpha, d):g} x {cap:g}"
            if d == "disk":
                v = ev.peak_memory_gib[("disk", None)]
                lines.append(f"  {_LABEL[d]:<16}{v:10.4f} {v:10.4f}  {use}")
            else:
                lines.append(f"  {_LABEL[d]:<16}{ev.peak_memory_gib[(d, 'prefill')]:10.4f} "
                             f"{ev.peak_memory_gib[(d, 'decode')]:10.4f}  {use}")
        lines.append("")
    if res.sensitivity is not None:
        sn = res.sensitivity
        mem = ", ".join(f"{_LABEL[d]} {v:+.4g}" for d, v in sn.tokens_per_s_per_gib.items())
        lines.append(f"Limits      binding: {', '.join(_compact(sn.binding, res)) if sn.binding else 'none'}")
        if res.capped_by:
            lines.append(f"            the batch sizes are capped by: {'; '.join(res.capped_by)}")
        lines.append(f"            tokens/s per extra GiB: {mem}")
        links = [(k.split('.', 1)[1] + (' (memory)' if k.startswith('memory') else ''), v)
                 for k, v in sn.tokens_per_s_per_gib_per_s.items()]
        shown = ", ".join(f"{k} {v:+.4g}" for k, v in links if v) or "none (no link limits this policy)"
        lines.append(f"            tokens/s per extra GiB/s: {shown}")
        lines.append(f"            ({sn.note})")
        lines.append("")
    if res.bounds is not None:
        b = res.bounds
        lines.append(f"Search      g in {b.g_lo}..{b.g_hi}, N in {b.N_lo}..{b.N_hi}, g*N <= {b.b_hi} "
                     f"(g: {b.source['g_hi']}, N: {b.source['N_hi']})")
        lines.append("            " + ("; ".join(res.binding_bounds) if res.binding_bounds
                                       else "no search bound is binding"))
    if res.solve is not None:
        s = res.solve
        gap = "not reported by the solver" if s.gap is None else f"{100 * s.gap:.4f}%"
        resolve = f" + LP re-solve {res.resolve.wall_s:.3f} s" if res.resolve else ""
        lines.append(f"Solver      {s.solver} {s.version}: {s.termination}, gap {gap}, "
                     f"solve {s.wall_s:.3f} s{resolve}, build {res.build_s:.3f} s, total {res.total_s:.3f} s")
    else:
        lines.append(f"Solver      none (policy evaluated from the formulas in {res.total_s * 1000:.1f} ms)")
    lines += [f"Note        {n}" for n in res.notes]
    flags = flexllmgen_flags(res)
    if flags:
        lines.append(f"FlexLLMGen  {flags}")
        if res.flexllmgen_throughput is not None and res.solve is not None:
            fewer = "" if res.flexllmgen_num_gpu_batches == res.num_gpu_batches else \
                f"; no integer percents fit at N={res.num_gpu_batches}, so N is lowered"
            lines.append(f"            ({res.flexllmgen_throughput:.4f} tokens/s with these integer percents{fewer})")
    elif res.gpu_batch_size is not None:
        lines.append("FlexLLMGen  no integer percents fit at this GPU batch size")
    if res.infeasible_reasons:
        lines.append("")
        lines += [f"Infeasible: {r}" for r in res.infeasible_reasons]
    return "\n".join(lines)
