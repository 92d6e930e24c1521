"""`python -m pipeline.agent ARGS`: `accelerate launch ARGS`, with torch's rendezvous store on loopback.

torch's `TCPStore` server listens on every interface whatever host it is given, so a single-machine
`accelerate launch` with 2+ processes opened a port (the elastic agent's rendezvous store) that any
host could reach. When the rendezvous address is a loopback one (`--main_process_ip 127.0.0.1`, what
`flows.launch` passes for a one-machine run), this wrapper binds the server socket to that address
itself and hands it to torch (`master_listen_fd`). A multi-machine address is left to torch.

The agent also dies with the flow process that launched it (`pipeline.lifeline`).
"""

import socket
import sys

import torch.distributed as dist
from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend, static_tcp_rendezvous

from pipeline.lifeline import die_with_launcher

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class LoopbackTCPStore(dist.TCPStore):
    """A `TCPStore` whose server, for a loopback host, listens on that host only."""

    def __init__(self, host_name: str, port: int, world_size: int | None = None, is_master: bool = False,
                 *args, **kwargs) -> None:
        if is_master and host_name in LOOPBACK and len(args) < 4 and kwargs.get("master_listen_fd") is None:
            ipv6 = host_name == "::1"
            try:
                server = socket.create_server(("::1" if ipv6 else "127.0.0.1", port), backlog=512,
                                              family=socket.AF_INET6 if ipv6 else socket.AF_INET)
            except OSError:
                server = None  # e.g. a multi-tenant server of this process has the port: torch reuses it
            if server is not None:
                port = server.getsockname()[1]
                kwargs["master_listen_fd"] = server.detach()  # torch owns the socket from here on
        super().__init__(host_name, port, world_size, is_master, *args, **kwargs)


def main(argv: list[str] | None = None) -> None:
    die_with_launcher()
    # Every place torch's launcher makes a store server looks the class up by one of these names.
    dist.TCPStore = static_tcp_rendezvous.TCPStore = c10d_rendezvous_backend.TCPStore = LoopbackTCPStore
    from accelerate.commands.launch import launch_command, launch_command_parser

    launch_command(launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
