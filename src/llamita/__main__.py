"""`python -m llamita`: the command line, so that `torchrun -m llamita ...` starts one per rank."""

from llamita.cli.main import app

if __name__ == "__main__":
    app()
