"""`bench list`: methods, benchmarks (with each dataset's origin) and backbones, one line each."""
from __future__ import annotations

import argparse

from benchmark.data.streams import default_data_root


def command(args: argparse.Namespace) -> int:
    """Methods, datasets with their benchmarks and origin, and backbones, one line each."""
    from pathlib import Path

    from benchmark.cli.hparams_doc import first_line
    from benchmark.data.datasets.declared import declare_datasets
    from benchmark.registry import BACKBONES, DATASETS, METHODS

    declare_datasets(Path(args.data_root))
    print("methods:")
    for name in METHODS.names():
        print(f"  {name:<12} {first_line(METHODS.get(name))}")
    print("benchmarks (<dataset>_t<N>, any N dividing the class count):")
    for name in DATASETS.names():
        spec = DATASETS.get(name)
        named = ", ".join(f"{name}_t{tasks}" for tasks in spec.named_tasks) or f"{name}_t<N>"
        print(f"  {named:<40} {spec.title}, {spec.num_classes} classes  [{DATASETS.origin(name)}]")
    print("backbones: any timm ViT as name.tag (e.g. vit_base_patch16_224.augreg_in21k), or:")
    for name in BACKBONES.names():
        print(f"  {name:<16} {first_line(BACKBONES.get(name))}")
    print("hyper-parameters and switches of a method: bench describe --method NAME [--bench B]")
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    listing = commands.add_parser("list", help="methods, benchmarks and backbones")
    listing.add_argument("--data-root", default=str(default_data_root()),
                         help="where declared datasets (<name>.clbench.toml) are looked for")
    listing.set_defaults(handler=command)
