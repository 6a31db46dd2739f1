"""The one connection layer of the drivers (PBX links and trunk recorders alike): framing.py (bytes → lines, telnet
filter), tcp.py (connect, keepalive), serial.py (every serial port, local or `rfc2217://`/`socket://`, opened by
one function), reconnect.py (reconnect forever with backoff, one WARNING per outage), lines.py (the line links
of PBXs: listen://, tcp:// with login, serial; backpressure, idle timeout, keepalive text)."""
