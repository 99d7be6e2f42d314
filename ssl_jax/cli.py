"""What every command line of ssl_jax shares: one-line errors and absl flag parsing."""
import sys

from absl import flags


def fail(message: str, code: int = 1):
    """Print `ssl_jax: error: MESSAGE` on stderr and exit with `code` (no traceback)."""
    print(f"ssl_jax: error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv):
    """absl flag parsing; a bad flag is one message and exit code 2, no traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}. Pass --helpshort for the flags.", code=2)
