from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckReadinessRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("arguments", "environment_variables", "working_directory", "stdout_path", "stderr_path", "input_root_directory", "temporary_directory", "server_logs_directory")
    class EnvironmentVariablesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_VARIABLES_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    STDOUT_PATH_FIELD_NUMBER: _ClassVar[int]
    STDERR_PATH_FIELD_NUMBER: _ClassVar[int]
    INPUT_ROOT_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    TEMPORARY_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    SERVER_LOGS_DIRECTORY_FIELD_NUMBER: _ClassVar[int]
    arguments: _containers.RepeatedScalarFieldContainer[str]
    environment_variables: _containers.ScalarMap[str, str]
    working_directory: str
    stdout_path: str
    stderr_path: str
    input_root_directory: str
    temporary_directory: str
    server_logs_directory: str
    def __init__(self, arguments: _Optional[_Iterable[str]] = ..., environment_variables: _Optional[_Mapping[str, str]] = ..., working_directory: _Optional[str] = ..., stdout_path: _Optional[str] = ..., stderr_path: _Optional[str] = ..., input_root_directory: _Optional[str] = ..., temporary_directory: _Optional[str] = ..., server_logs_directory: _Optional[str] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("exit_code", "resource_usage")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_USAGE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    resource_usage: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    def __init__(self, exit_code: _Optional[int] = ..., resource_usage: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ...) -> None: ...
