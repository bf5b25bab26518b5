import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FilePoolResourceUsage(_message.Message):
    __slots__ = ("files_created", "files_count_peak", "files_size_bytes_peak", "reads_count", "reads_size_bytes", "writes_count", "writes_size_bytes", "truncates_count")
    FILES_CREATED_FIELD_NUMBER: _ClassVar[int]
    FILES_COUNT_PEAK_FIELD_NUMBER: _ClassVar[int]
    FILES_SIZE_BYTES_PEAK_FIELD_NUMBER: _ClassVar[int]
    READS_COUNT_FIELD_NUMBER: _ClassVar[int]
    READS_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITES_COUNT_FIELD_NUMBER: _ClassVar[int]
    WRITES_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATES_COUNT_FIELD_NUMBER: _ClassVar[int]
    files_created: int
    files_count_peak: int
    files_size_bytes_peak: int
    reads_count: int
    reads_size_bytes: int
    writes_count: int
    writes_size_bytes: int
    truncates_count: int
    def __init__(self, files_created: _Optional[int] = ..., files_count_peak: _Optional[int] = ..., files_size_bytes_peak: _Optional[int] = ..., reads_count: _Optional[int] = ..., reads_size_bytes: _Optional[int] = ..., writes_count: _Optional[int] = ..., writes_size_bytes: _Optional[int] = ..., truncates_count: _Optional[int] = ...) -> None: ...

class POSIXResourceUsage(_message.Message):
    __slots__ = ("user_time", "system_time", "maximum_resident_set_size", "page_reclaims", "page_faults", "swaps", "block_input_operations", "block_output_operations", "messages_sent", "messages_received", "signals_received", "voluntary_context_switches", "involuntary_context_switches", "termination_signal")
    USER_TIME_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_TIME_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_RESIDENT_SET_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_RECLAIMS_FIELD_NUMBER: _ClassVar[int]
    PAGE_FAULTS_FIELD_NUMBER: _ClassVar[int]
    SWAPS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_INPUT_OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_OUTPUT_OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_SENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    VOLUNTARY_CONTEXT_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    INVOLUNTARY_CONTEXT_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    user_time: _duration_pb2.Duration
    system_time: _duration_pb2.Duration
    maximum_resident_set_size: int
    page_reclaims: int
    page_faults: int
    swaps: int
    block_input_operations: int
    block_output_operations: int
    messages_sent: int
    messages_received: int
    signals_received: int
    voluntary_context_switches: int
    involuntary_context_switches: int
    termination_signal: str
    def __init__(self, user_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., system_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., maximum_resident_set_size: _Optional[int] = ..., page_reclaims: _Optional[int] = ..., page_faults: _Optional[int] = ..., swaps: _Optional[int] = ..., block_input_operations: _Optional[int] = ..., block_output_operations: _Optional[int] = ..., messages_sent: _Optional[int] = ..., messages_received: _Optional[int] = ..., signals_received: _Optional[int] = ..., voluntary_context_switches: _Optional[int] = ..., involuntary_context_switches: _Optional[int] = ..., termination_signal: _Optional[str] = ...) -> None: ...

class MonetaryResourceUsage(_message.Message):
    __slots__ = ("expenses",)
    class Expense(_message.Message):
        __slots__ = ("currency", "cost")
        CURRENCY_FIELD_NUMBER: _ClassVar[int]
        COST_FIELD_NUMBER: _ClassVar[int]
        currency: str
        cost: float
        def __init__(self, currency: _Optional[str] = ..., cost: _Optional[float] = ...) -> None: ...
    class ExpensesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MonetaryResourceUsage.Expense
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MonetaryResourceUsage.Expense, _Mapping]] = ...) -> None: ...
    EXPENSES_FIELD_NUMBER: _ClassVar[int]
    expenses: _containers.MessageMap[str, MonetaryResourceUsage.Expense]
    def __init__(self, expenses: _Optional[_Mapping[str, MonetaryResourceUsage.Expense]] = ...) -> None: ...

class InputRootResourceUsage(_message.Message):
    __slots__ = ("directories_resolved", "directories_read", "files_read")
    DIRECTORIES_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    DIRECTORIES_READ_FIELD_NUMBER: _ClassVar[int]
    FILES_READ_FIELD_NUMBER: _ClassVar[int]
    directories_resolved: int
    directories_read: int
    files_read: int
    def __init__(self, directories_resolved: _Optional[int] = ..., directories_read: _Optional[int] = ..., files_read: _Optional[int] = ...) -> None: ...
