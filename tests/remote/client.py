"""The client side of the worker's tests: hermetic workers as processes,
``bgd execute command``'s answer read back, and a small Execute client for
what bgd cannot ask (an Action with a timeout)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from google.protobuf import text_format

from hermetic.remote.cas import CasClient, digest_of_message, key
from hermetic.remote.protos import grpc, re_grpc, re_pb2


def worker_argv(url: str, instance: str, work_dir: str, *options: str) -> list[str]:
    """``hermetic worker`` run by this interpreter: its three required
    options, then ``options``."""
    return [
        sys.executable,
        "-m",
        "hermetic",
        "worker",
        "--server",
        url,
        "--instance",
        instance,
        "--work-dir",
        work_dir,
        *options,
    ]


class Worker:
    """``hermetic worker`` in a process of its own, stopped by its pid."""

    def __init__(
        self,
        url: str,
        instance: str,
        work_dir: str,
        *,
        bot_id: str,
        platform: Sequence[str] = (),
        concurrency: int = 1,
        wrap: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.bot_id = bot_id
        self.log = os.path.join(os.path.dirname(work_dir), f"{bot_id}.log")
        argv = [
            *wrap,
            *worker_argv(
                url, instance, work_dir, "--bot-id", bot_id, "--concurrency", str(concurrency)
            ),
        ]
        for p in platform:
            argv += ["--platform", p]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd="/",
            )

    def text(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def wait_for(self, needle: str, limit: float = 120) -> None:
        """Until the log says ``needle`` (a bound proving it came)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker {self.bot_id} never logged {needle!r}:\n{self.text()}")

    def terminate(self, limit: float = 60) -> int:
        """SIGTERM, and the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker {self.bot_id} ignored SIGTERM:\n{self.text()}") from None


def execute_response(stdout: str) -> Any:
    """The ExecuteResponse in ``bgd execute command``'s output: the last
    Operation it printed (text format), whose response it holds."""
    from buildgrid.common.protos.google.longrunning import operations_pb2

    start = stdout.rindex('name: "')
    end = stdout.index("Response status code:", start)
    op = operations_pb2.Operation()
    text_format.Parse(stdout[start:end], op)
    assert op.done, stdout
    response = re_pb2.ExecuteResponse()
    assert op.response.Unpack(response), stdout
    return response


def blob(target: str, instance: str, digest: Any) -> bytes:
    with grpc.insecure_channel(target) as channel:
        return CasClient(channel, instance).read_one(digest)


def execute(
    target: str,
    instance: str,
    argv: Sequence[str],
    *,
    timeout_s: float | None = None,
    platform: dict[str, str] | None = None,
    output_files: Sequence[str] = (),
    output_directories: Sequence[str] = (),
    output_paths: Sequence[str] = (),
) -> Any:
    """Execute ``argv`` with an empty input root; the ExecuteResponse.
    Outputs are named as a v2.0 client does (``output_files``,
    ``output_directories``: Bazel 4) or as a v2.1 one (``output_paths``)."""
    with grpc.insecure_channel(target) as channel:
        cas = CasClient(channel, instance)
        command = re_pb2.Command(
            arguments=list(argv),
            output_files=list(output_files),
            output_directories=list(output_directories),
            output_paths=list(output_paths),
        )
        for k, v in sorted((platform or {}).items()):
            command.platform.properties.add(name=k, value=v)
        command_digest, command_data = digest_of_message(command)
        root_digest, root_data = digest_of_message(re_pb2.Directory())
        action = re_pb2.Action(
            command_digest=command_digest, input_root_digest=root_digest, do_not_cache=True
        )
        action.platform.CopyFrom(command.platform)
        if timeout_s is not None:
            action.timeout.FromSeconds(int(timeout_s))
        action_digest, action_data = digest_of_message(action)
        cas.upload(
            {
                key(command_digest): command_data,
                key(root_digest): root_data,
                key(action_digest): action_data,
            }
        )
        stub = re_grpc.ExecutionStub(channel)
        last = None
        for op in stub.Execute(
            re_pb2.ExecuteRequest(
                instance_name=instance, action_digest=action_digest, skip_cache_lookup=True
            ),
            timeout=300,
        ):
            last = op
        assert last is not None and last.done
        response = re_pb2.ExecuteResponse()
        assert last.response.Unpack(response)
        return response


def completed_results(target: str, instance: str) -> list[Any]:
    """The ExecuteResponse of every operation the farm completed, from its
    Operations service (BuildGrid lists only unfinished ones unless asked)."""
    from buildgrid.common.protos.google.longrunning import operations_pb2, operations_pb2_grpc

    responses = []
    with grpc.insecure_channel(target) as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        token = ""
        while True:
            page = stub.ListOperations(
                operations_pb2.ListOperationsRequest(
                    name=instance, filter="stage=COMPLETED", page_size=1000, page_token=token
                ),
                timeout=60,
            )
            for op in page.operations:
                response = re_pb2.ExecuteResponse()
                if op.done and op.response.Unpack(response):
                    responses.append(response)
            token = page.next_page_token
            if not token:
                return responses
