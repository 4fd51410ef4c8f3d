"""A fluid model of the links on a simpy clock: transfers share each endpoint's rate fairly.

Each node has an egress (upload) and an ingress (download) rate. A transfer from
``src`` to ``dst`` runs at ``min(src.egress / src.outgoing, dst.ingress / dst.incoming)``:
every flow gets an equal share of each NIC it crosses (what RDMA NICs and TCP
do to first order). When a flow starts or ends, or a node's rate changes, only
the flows at that node are re-rated; each flow's completion sits in a heap with
a version, so a re-rate costs O(log flows) and no simpy event. One simpy process
(``_pump``) sleeps until the earliest completion and wakes when an earlier one
is pushed.

    >>> env = simpy.Environment()
    >>> net = Network(env)
    >>> a, b = net.add_node("a", egress=100.0, ingress=100.0), net.add_node("b", egress=100.0, ingress=100.0)
    >>> done = net.transfer(a, b, 200.0)
    >>> env.run(done); env.now
    2.0
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field

import simpy


class LinkDown(Exception):
    """The other end of a transfer died."""


@dataclass(eq=False)
class Node:
    name: str
    egress: float
    ingress: float
    alive: bool = True
    outgoing: dict["Flow", None] = field(default_factory=dict)
    incoming: dict["Flow", None] = field(default_factory=dict)
    """Flows as ordered sets (dict keys): a set of objects hashed by ``id()`` iterates in memory-address
    order, which differs between runs, and the order flows are re-rated in breaks ties between equal
    completion times; insertion order keeps a simulation with a fixed seed the same every run."""
    bytes_sent: float = 0.0


@dataclass(eq=False)
class Flow:
    src: Node
    dst: Node
    nbytes: float
    remaining: float
    done: simpy.Event
    rate: float = 0.0
    since: float = 0.0
    version: int = 0


class Network:
    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self._heap: list[tuple[float, int, int, Flow]] = []
        self._seq = itertools.count()
        self._wake: simpy.Event = env.event()
        self._next_wake = math.inf
        env.process(self._pump())

    def add_node(self, name: str, egress: float, ingress: float) -> Node:
        if egress < 0 or ingress < 0:
            raise ValueError(f"node {name}: rates must be >= 0 (egress {egress}, ingress {ingress})")
        return Node(name, egress, ingress)

    def transfer(self, src: Node, dst: Node, nbytes: float) -> simpy.Event:
        """An event that succeeds when ``nbytes`` have moved, or fails with ``LinkDown``."""
        done = self.env.event()
        if not src.alive or not dst.alive:
            done.fail(LinkDown(f"{src.name if not src.alive else dst.name} is down"))
            return done
        if nbytes <= 0:
            done.succeed()
            return done
        flow = Flow(src, dst, float(nbytes), float(nbytes), done, since=self.env.now)
        src.outgoing[flow] = None
        dst.incoming[flow] = None
        self._rerate(src, dst)
        return done

    def set_egress(self, node: Node, rate: float) -> None:
        node.egress = max(rate, 0.0)
        self._rerate(node)

    def kill(self, node: Node) -> None:
        """The node dies: every transfer to or from it fails."""
        node.alive = False
        flows = list({**node.outgoing, **node.incoming})
        for flow in flows:
            self._end(flow, LinkDown(f"{node.name} died"))
        others = dict.fromkeys(n for f in flows for n in (f.src, f.dst))  # ordered: see Node.outgoing
        self._rerate(*(n for n in others if n is not node))

    # -- internals -----------------------------------------------------------
    def _share(self, flow: Flow) -> float:
        return min(flow.src.egress / len(flow.src.outgoing), flow.dst.ingress / len(flow.dst.incoming))

    def _rerate(self, *nodes: Node) -> None:
        now = self.env.now
        touched: dict[Flow, None] = {}
        for node in nodes:
            touched.update(node.outgoing)
            touched.update(node.incoming)
        for flow in touched:
            new = self._share(flow)
            if new == flow.rate and flow.version:
                continue
            flow.remaining -= flow.rate * (now - flow.since)
            flow.since, flow.rate = now, new
            flow.version += 1
            eta = now + (flow.remaining / new if new > 0 else math.inf)
            if eta < math.inf:
                heapq.heappush(self._heap, (eta, next(self._seq), flow.version, flow))
                if eta < self._next_wake and not self._wake.triggered:
                    self._wake.succeed()

    def _end(self, flow: Flow, error: Exception | None) -> None:
        flow.src.outgoing.pop(flow, None)
        flow.dst.incoming.pop(flow, None)
        flow.version = -1  # every heap entry of it is stale now
        if error is None:
            flow.src.bytes_sent += flow.nbytes
            flow.done.succeed()
        else:
            flow.done.fail(error)

    def _pump(self):
        while True:
            while self._heap and self._heap[0][2] != self._heap[0][3].version:
                heapq.heappop(self._heap)  # stale: the flow was re-rated or ended
            if self._heap:
                eta = self._heap[0][0]
                self._next_wake = eta
                self._wake = self.env.event()
                yield self._wake | self.env.timeout(max(eta - self.env.now, 0.0))
            else:
                self._next_wake = math.inf
                self._wake = self.env.event()
                yield self._wake
            now = self.env.now
            finished = []
            while self._heap and self._heap[0][0] <= now + 1e-12:
                _, _, version, flow = heapq.heappop(self._heap)
                if version == flow.version:
                    finished.append(flow)
            for flow in finished:
                nodes = (flow.src, flow.dst)
                flow.remaining = 0.0
                flow.rate = 0.0
                self._end(flow, None)
                self._rerate(*nodes)
