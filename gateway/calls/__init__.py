from gateway.calls.tracker import *  # noqa
from gateway.calls.tracker import MAX_LAST_ENDED_BYTES  # noqa
