"""whaletopd: runs the whaletop desktop as an explicit, event-driven state machine.

Event flow (one direction, one owner of state):

    signals.py / children.py / probes.py  --post-->  events.EventQueue
    loop.py  --get-->  machine.py (transitions)  --callbacks-->  desktop.py (the work)
"""

__version__ = "0.1.0"
