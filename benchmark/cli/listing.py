"""`bench list`: methods, benchmarks and backbones, one line each."""
from __future__ import annotations

import argparse



def command(args: argparse.Namespace) -> int:
    """Methods, benchmarks and backbones, one line each."""
    from benchmark.cli.hparams_doc import first_line
    from benchmark.registry import BACKBONES, METHODS
    from benchmark.data.streams import named_benchmarks

    print("methods:")
    for name in METHODS.names():
        print(f"  {name:<12} {first_line(METHODS.get(name))}")
    print("benchmarks (<dataset>_t<N>, any N dividing the class count):")
    for name in named_benchmarks():
        print(f"  {name}")
    print("backbones: any timm ViT as name.tag (e.g. vit_base_patch16_224.augreg_in21k), or:")
    for name in BACKBONES.names():
        print(f"  {name:<16} {first_line(BACKBONES.get(name))}")
    print("hyper-parameters and switches of a method: bench describe --method NAME [--bench B]")
    return 0


def add_parser(commands) -> None:
    """The subcommand's options."""
    listing = commands.add_parser("list", help="methods, benchmarks and backbones")
    listing.set_defaults(handler=command)
