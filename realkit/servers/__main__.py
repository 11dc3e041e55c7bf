"""`python -m realkit.servers --model ...`: the same command as `serverlab serve`."""

from serverlab.cmd_serve import serve

if __name__ == "__main__":
    serve(prog_name="python -m realkit.servers")
