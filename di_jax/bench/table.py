"""The markdown table of `di-jax bench`: one row per (config, method, batch, precision, remat)."""

HEADER = ("| config | method | batch | prec | remat | compile s | median ms | img/s | pipelined img/s | peak MiB "
          "| XLA MiB | GFLOP/step | TFLOP/s | MFU | torch eager img/s | JAX/eager | torch.compile img/s "
          "| JAX/compile | torch eager peak MiB |")
JAX_COLUMNS = 9                  # compile s ... MFU


def _fmt(v, spec="{:.2f}"):
    if v is None:
        return "n/a"
    return spec.format(v) if isinstance(v, (int, float)) else str(v)


def _scaled(v, scale, spec):
    return _fmt(None if v is None else v / scale, spec)


def _jax_columns(j: dict) -> str:
    if "error" in j:                  # compile s holds the error; the other columns stay empty
        return f"| error: {j['error']} " + "| " * (JAX_COLUMNS - 1)
    mfu = None if j.get("mfu") is None else 100 * j["mfu"]
    return (f"| {j['compile_s']:.1f} | {j['median_ms']:.1f} | {j['images_per_s']:.2f} "
            f"| {j['pipelined_images_per_s']:.2f} | {_fmt(j['peak_mem_mib'], '{:.0f}')} ({j['peak_mem_kind']}) "
            f"| {_fmt(j['xla_mem_mib'], '{:.0f}')} "
            f"| {_scaled(j['flops_per_step'], 1e9, '{:.1f}')} "
            f"| {_scaled(j['flops_per_s'], 1e12, '{:.3f}')} "
            f"| {_fmt(mfu, '{:.1f}%')} ")


def _torch_columns(t, ratio) -> str:
    if t is None:
        return "| not run | n/a "
    if "error" in t:
        return f"| error: {t['error']} | n/a "
    return f"| {t['images_per_s']:.2f} | {_fmt(ratio, '{:.2f}x')} "


def markdown(result: dict) -> str:
    """The header line (device, versions, steps, peaks, load) and the table of a bench result dict."""
    peaks = result["peak_tflops"] or {}
    peak_text = ", ".join(f"{k} {v:g}" for k, v in peaks.items()) or "n/a"
    lines = [f"device: {result['device']}; jax {result['jax_version']}, torch {result.get('torch_version') or 'n/a'}; "
             f"{result['steps']} timed steps after {result['warmup']} warm-up; peak TFLOP/s {peak_text}; "
             f"host load average {_fmt(result.get('load_avg_start') and result['load_avg_start'][0])} (start) "
             f"{_fmt(result.get('load_avg_end') and result['load_avg_end'][0])} (end)",
             "",
             HEADER,
             "|---" * HEADER.count("| ") + "|"]
    for r in result["rows"]:
        te, tc = r.get("torch-eager"), r.get("torch-compile")
        key = f"| {r['config']} | {r['method']} | {r['batch']} | {r['precision']} | {r['remat']} "
        mem = "n/a" if te is None or "error" in te else f"{_fmt(te['peak_mem_mib'], '{:.0f}')} ({te['peak_mem_kind']})"
        lines.append(key + _jax_columns(r["jax"]) + _torch_columns(te, r.get("ratio_eager"))
                     + _torch_columns(tc, r.get("ratio_compile")) + f"| {mem} |")
    return "\n".join(lines)
