"""``hybridsearch apply --base CKPT --adapters DIR [--merge] --out PATH [--hf-peft DIR]``: deploy saved adapters."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "apply"
HELP = ("put saved adapters on a base checkpoint and write the result in the base's format (--merge: one plain "
        "checkpoint); --hf-peft: a Hugging Face PEFT adapter plus the base it loads on")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True,
                   help="base model: registered name, hustvl .pth, mamba_ssm / HF checkpoint directory, or a "
                        "Hugging Face Hub id in the local cache (never downloaded)")
    p.add_argument("--adapters", type=Path, required=True,
                   help="adapters folder (save_adapters, or OUT/adapters/TASK of export --retrain)")
    p.add_argument("--merge", action="store_true",
                   help="fold the adapters into the base weights: --out is then a plain checkpoint of the base's "
                        "format that create_model loads (refused, by name, for methods that cannot be folded)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to write: with --merge a .pth file (Vim) or a directory (LM); without, a bundle "
                        "directory (base checkpoint + adapters) that hybridsearch.deploy.load_model reads")
    p.add_argument("--hf-peft", type=Path, default=None, metavar="DIR",
                   help="also write a Hugging Face PEFT LoRA adapter (adapter_config.json + "
                        "adapter_model.safetensors) and, beside it, the base with what PEFT cannot express merged "
                        "(DIR/base/ for the LM: AutoPeftModelForCausalLM.from_pretrained(DIR) loads it)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from ..deploy import apply_adapters, export_hf_peft, write_model
    from ..errors import ConfigError
    from ..peft import merge_peft, unmergeable

    if args.out is None and args.hf_peft is None:
        raise ConfigError("nothing to write: pass --out PATH and/or --hf-peft DIR")
    model = apply_adapters(args.base, args.adapters)
    blocked = unmergeable(model) if args.merge else []
    if blocked:  # refused before anything is written
        raise ConfigError(f"--merge: {', '.join(blocked)} cannot be folded into the base weights exactly; "
                          "apply without --merge (a bundle: base checkpoint + adapters)")
    summary: dict = {"base": str(args.base), "adapters": str(args.adapters), "merged": args.merge,
                     "format": model.base_format}
    if args.hf_peft is not None:
        hf = export_hf_peft(model, args.hf_peft, base_name=str(args.base))
        summary["hf_peft"] = {"dir": hf["dir"], "base": hf["base"], "targets": len(hf["config"]["target_modules"]),
                              "adapter": hf["adapter"], "merged": hf["merged"], "left_out": hf["left_out"]}
    if args.out is not None:
        if args.merge:
            merge_peft(model, strict=True)
        summary["out"] = str(write_model(model, args.out))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if "out" in summary:
        kind = "plain checkpoint" if args.merge else "bundle (base + adapters)"
        print(f"wrote {summary['out']}: {kind}, {model.base_format} format")
    if "hf_peft" in summary:
        hf = summary["hf_peft"]
        print(f"wrote {hf['dir']}: Hugging Face PEFT LoRA on {hf['targets']} modules: "
              f"{', '.join(hf['adapter']) or 'none (a zero placeholder)'}")
        print(f"  merged into {hf['base']}: {', '.join(hf['merged']) or 'nothing'}")
        if hf["left_out"]:
            print(f"  left out (not reproduced; see its README.md): {', '.join(hf['left_out'])}")
    return 0
