"""Several hosts, one job: `jax.distributed` set-up and the checks that keep hosts in step.

One process per host (per TPU VM worker, per SLURM task). Every process runs the same
command; `initialize` joins them into one JAX job whose mesh spans every device of every
host. Each host then reads only its own rows of every global batch (emosup.data.pipeline)
and `parallel.to_global` assembles the global arrays.

* explicit: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (any cluster);
* automatic (`--distributed=auto`, the default): under SLURM with more than one task, under
  Open MPI with more than one rank, or on a Cloud TPU VM, `jax.distributed.initialize()` finds
  its arguments itself; elsewhere the job is one process;
* `--distributed=off`: one process whatever the environment says.

A coordinator that cannot be reached fails within `--distributed_timeout` seconds naming its
address (JAX itself aborts the process without a Python error, so non-coordinator processes
first check the address with a plain TCP connection). Hosts that disagree on the config or
the pair-table version stop, each naming the processes that differ, instead of hanging
in a collective (`check_same`).
"""
import hashlib
import json
import os
import socket
import time

from absl import flags, logging

MODES = ("auto", "on", "off")


class DistributedError(RuntimeError):
    pass


def define_flags():
    """The multi-host flags of an entry point (`python -m emosup.train`)."""
    flags.DEFINE_enum("distributed", "auto", MODES,
                      "auto: join a multi-host job when SLURM / Open MPI / a TPU VM slice is detected or "
                      "--coordinator_address is given; on: always call jax.distributed.initialize(); off: "
                      "one process")
    flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0 (explicit multi-host set-up)")
    flags.DEFINE_integer("num_processes", 0, "number of processes of the job (explicit set-up)")
    flags.DEFINE_integer("process_id", -1, "this process's index, 0 .. num_processes-1 (explicit set-up)")
    flags.DEFINE_integer("distributed_timeout", 300, "seconds to wait for the coordinator and the other processes")


def initialize_from_flags(flag_values=None):
    f = flag_values or flags.FLAGS
    return initialize(f.distributed, f.coordinator_address, f.num_processes, f.process_id, f.distributed_timeout)


def detected_cluster(environ=None):
    """Name of the multi-process launcher this process runs under, or "" (plain env checks;
    jax.distributed.initialize() then reads its arguments from the same environment)."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "openmpi"
    if env.get("TPU_WORKER_HOSTNAMES", "").count(",") or env.get("MEGASCALE_COORDINATOR_ADDRESS") \
            or (environ is None and _tpu_chips() > 0):
        return "tpu"  # TPU VM workers: jax reads the slice's hosts from the metadata server
    return ""


def _tpu_chips():
    """TPU chips on this machine (PCI ids, as JAX's own Cloud TPU set-up counts them)."""
    try:
        from jax._src import hardware_utils  # private; guarded: only a detection aid

        return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
    except Exception:  # noqa: BLE001 - any failure means "no TPU found"
        return int(os.path.exists("/dev/accel0"))


def parse_address(address):
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(f"--coordinator_address={address!r}: expected HOST:PORT, e.g. 10.0.0.2:8476")
    return host.strip("[]"), int(port)


def wait_for_coordinator(address, timeout_s, process_id=None, num_processes=None):
    """Returns once a TCP connection to `address` succeeds; raises naming it after `timeout_s`."""
    host, port = parse_address(address)
    deadline, last = time.monotonic() + timeout_s, None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(timeout_s, 0.1))):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            who = f"process {process_id} of {num_processes}: " if process_id is not None else ""
            raise DistributedError(
                f"{who}could not reach the coordinator at {address} within {timeout_s:g} s ({last}). "
                "Is process 0 running, with the same --coordinator_address, and is the port open "
                "between the hosts?")
        time.sleep(0.25)


def initialize(mode="auto", coordinator_address="", num_processes=0, process_id=-1, timeout_s=300):
    """Joins the multi-host job when one is configured or detected; returns True if it did.

    Call before anything touches a JAX device (the train entry point does it first).
    """
    if mode not in MODES:
        raise DistributedError(f"--distributed={mode!r}: expected one of {MODES}")
    explicit = bool(coordinator_address) or num_processes > 0 or process_id >= 0
    if mode == "off":
        if explicit:
            raise DistributedError("--distributed=off contradicts --coordinator_address/--num_processes/--process_id")
        return False
    if timeout_s <= 0:
        raise DistributedError(f"--distributed_timeout={timeout_s}: must be a positive number of seconds")
    import jax

    kwargs = dict(initialization_timeout=int(timeout_s))
    if explicit:
        missing = [n for n, ok in (("--coordinator_address", coordinator_address), ("--num_processes", num_processes > 0),
                                   ("--process_id", process_id >= 0)) if not ok]
        if missing:
            raise DistributedError(f"explicit multi-host set-up needs --coordinator_address, --num_processes and "
                                   f"--process_id; missing {', '.join(missing)}")
        if not process_id < num_processes:
            raise DistributedError(f"--process_id={process_id} must be below --num_processes={num_processes}")
        parse_address(coordinator_address)
        kwargs.update(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
        how = f"process {process_id} of {num_processes}, coordinator {coordinator_address}"
    else:
        cluster = detected_cluster()
        if mode == "auto" and not cluster:
            return False
        how = f"auto-detected ({cluster or 'forced with --distributed=on'})"
    # CPU devices talk through gloo (the default CPU client has no cross-process collectives);
    # GPU/TPU backends ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit and process_id != 0:
        wait_for_coordinator(coordinator_address, timeout_s, process_id, num_processes)
    logging.info("distributed: joining the job (%s), waiting up to %ds for every process", how, timeout_s)
    jax.distributed.initialize(**kwargs)
    logging.info("distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def digest(value):
    """Stable SHA-256 of a JSON-able value (sorted keys), as hex."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def check_same(what, value):
    """Every process must hold the same `value` (compared by digest); otherwise every process
    raises naming the processes that differ from process 0. A no-op on one process."""
    import jax

    if jax.process_count() == 1:
        return
    import numpy as np
    from jax.experimental import multihost_utils

    mine = np.frombuffer(bytes.fromhex(digest(value)), np.uint32)
    every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 8]
    differ = [p for p in range(len(every)) if not np.array_equal(every[p], every[0])]
    if differ:
        raise DistributedError(
            f"the hosts disagree on {what}: process(es) {differ} differ from process 0 "
            f"(this is process {jax.process_index()}). Every host must run the same command on the same "
            "files and code version.")


def barrier(name):
    """Every process waits here until all have arrived (a no-op on one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
