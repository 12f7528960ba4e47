"""Serve a local checkpoint behind an OpenAI-compatible API with `transformers serve`, images included.

    python -m editthinker.backends.serve --model models/rl --port 8011

The plain `transformers serve` CLI cannot see a processor class registered in our code (the tiny thinker's),
falls back to the tokenizer and silently drops images. This launcher registers the class first (importing
`editthinker.models.tiny_vlm` does) and then starts `transformers.cli.serve.Serve` in this process. It is the
loopback stand-in for a vLLM server or the OpenAI API in tests; a real VLM served by vLLM needs none of this.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (or model id) to preload")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8011)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)

    from transformers.cli.serve import Serve

    import editthinker.models.vlm  # noqa: F401  (registers the tiny thinkers' processors with AutoProcessor)

    Serve(
        force_model=args.model,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype="float32",
        log_level=args.log_level,
        default_seed=0,
    )


if __name__ == "__main__":
    main()
