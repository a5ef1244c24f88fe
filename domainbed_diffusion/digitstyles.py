"""The old spelling of ``python -m offline_generation prepare`` (DigitStyles now lives in ``benchmark``): still
accepted, with a one-line note."""
import sys

if __name__ == "__main__":
    from .benchmark.digitstyles import main
    print("note: `python -m domainbed_diffusion.digitstyles` is now `python -m offline_generation prepare` (same "
          "options)", file=sys.stderr)
    sys.exit(main())
