"""The distributed runtime: cloud, edge and device nodes as processes talking over ZeroMQ.

- `protocol`: the wire format (msgpack header + raw array frames) and its checks.
- `rounds`: each node's share of a cloud round as pure jitted functions, the same math
  as `hierfl.sim.engine` (so `hierfl launch` and `hierfl simulate` agree).
- `node`: what nodes share: the model's layout, membership, sockets, counters.
- `device`, `edge`, `cloud`: the node shells (sockets, timers, files).
- `secure`: secure aggregation between a plant's devices and its edge (fixed-point
  encoding, the device's and the edge's side of the four steps as message handlers).
- `checkpoints`: the cloud's orbax checkpoints; `security`: CurveZMQ keys.
- `launch`: every node of a topology as local processes; `cli`: the commands.
"""
