"""The run keeper: the long-lived parent of a home's job processes.

Runs must outlive the scheduler process (DESIGN.md §3, issues 11 and 12).  One small
keeper per home - the model of containerd's shim and systemd's service manager - spawns
the job processes, holds their output pipes, enforces their timeouts, contains each
run's whole process tree (a cgroup per run, else its process group under the subreaper
keeper) and writes each outcome durably to HOME/keeper.journal, from which whichever
scheduler runs collects it.  The scheduler talks to it over HOME/keeper.sock.

    protocol.py     records (Launch, Started, Outcome, ...) and their JSON
    client.py       KeeperClient, ensure_keeper, read_journal: what the scheduler calls
    daemon.py       becoming the keeper: lock, readiness, stale leftovers
    server.py       the keeper's loop          conns.py    its side of the socket
    runs.py         one run: spawn, output, stop, outcome
    containment.py  cgroup / pgroup boxes      cgroups.py  hierarchy discovery
    procs.py        the process tree below the keeper (pgroup containment)
    output.py       the run's output file      journal.py  the outcome journal

docs/KEEPER.md has the whole picture.  This package imports nothing heavy (no
SQLAlchemy, no click, no threads): the keeper starts fast and spawns cheaply.
"""
