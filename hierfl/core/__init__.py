"""The round's pure parts: algorithms, tier rules, link codecs, keys by position and the steps
of a round (device, edge, cloud). No I/O, no engine: the simulator and the runtime call these."""
