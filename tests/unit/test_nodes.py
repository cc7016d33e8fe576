"""bidpm.raycluster.nodes: the node timeline a study prints on an autoscaling cluster (pure parts, no Ray)."""

from __future__ import annotations

from bidpm.raycluster.nodes import HEAD_RESOURCE, NodeSample, NodeTimeline, change_line, format_timeline, summarise

HEAD = {"Alive": True, "Resources": {"CPU": 2.0, HEAD_RESOURCE: 1.0, "node:10.0.0.1": 1.0, "memory": 1e9}}


def _slot(alive: bool = True) -> dict:
    return {"Alive": alive, "Resources": {"CPU": 1.0, "accelerator_slot": 1.0, "object_store_memory": 1e8}}


def test_summarise_counts_alive_workers_and_their_resources():
    s = summarise([HEAD, _slot(), _slot(), _slot(alive=False)], t=3.0)
    assert (s.nodes, s.workers) == (3, 2)
    assert dict(s.resources) == {"CPU": 4.0, "accelerator_slot": 2.0}   # node:* and memory left out
    assert summarise([{"Alive": True, "IsHead": True, "Resources": {"CPU": 0.0}}], 0.0).workers == 0


def test_timeline_keeps_changes_prints_them_and_knows_a_single_machine():
    states = iter([[HEAD], [HEAD], [HEAD, _slot()], [HEAD, _slot()], [HEAD, _slot(), _slot()], [HEAD]])
    printed: list[str] = []
    tl = NodeTimeline(sample_fn=lambda t: summarise(next(states), t), print_fn=printed.append)
    for _ in range(6):
        tl.sample()
    assert [s.workers for s in tl.samples] == [0, 1, 2, 0]
    assert len(printed) == 3 and printed[0].startswith("[nodes +0:00] worker nodes 0 -> 1 (2 alive; CPU 3, accelerator_slot 1)")
    assert tl.on_cluster
    table = tl.format()
    assert table.splitlines()[0] == "nodes over time:" and "accelerator_slot 2" in table

    laptop = NodeTimeline(sample_fn=lambda t: summarise([HEAD], t), print_fn=printed.append)
    laptop.sample(), laptop.sample()
    assert not laptop.on_cluster and len(laptop.samples) == 2 and len(printed) == 3   # nothing printed


def test_format_is_a_table_with_clock_times():
    rows = [NodeSample(0.0, 1, 0, {"CPU": 2.0}), NodeSample(65.4, 2, 1, {"CPU": 3.0, "GPU": 1.0})]
    out = format_timeline(rows).splitlines()
    assert out[1].split() == ["time", "nodes", "workers", "resources"]
    assert out[3].split()[:3] == ["+1:05", "2", "1"] and out[3].endswith("CPU 3, GPU 1")
    assert change_line(None, rows[0]) == "[nodes +0:00] worker nodes 0 (1 alive; CPU 2)"
