"""What every example shares: its command line."""

from __future__ import annotations

import argparse


def arguments(description: str, image: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--address", default="/run/flotilla/flotilla.sock",
                        help="the containerd-API socket (Flotilla's gateway or containerd)")
    parser.add_argument("--namespace", default="examples")
    if image:
        parser.add_argument("--image", required=True, help="e.g. 127.0.0.1:5000/busybox:latest")
    return parser.parse_args()
