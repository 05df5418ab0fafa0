"""One module per `jax-sft` subcommand: each has `add_parser(subparsers)` and `run(args)`."""
