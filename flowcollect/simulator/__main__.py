"""``python -m flowcollect.simulator``: the Modbus TCP plant in the foreground."""

from flowcollect.simulator.modbus import main

main()
