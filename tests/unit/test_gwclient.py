"""The gateway client's choice of gateway: Shifter's random order, with failover."""
import itertools

from shifter_core.gwclient import GatewayClient

URLS = ["http://gw1:8000", "http://gw2:8000/", "https://gw3"]


def test_each_request_tries_every_gateway_once_in_a_new_random_order():
    client = GatewayClient(URLS, "sys")
    orders = [tuple(client.in_random_order()) for _ in range(600)]
    expected = ("http://gw1:8000", "http://gw2:8000", "https://gw3")
    assert all(sorted(order) == sorted(expected) for order in orders)     # failover reaches every one
    assert set(orders) == set(itertools.permutations(expected))           # 6 orders: (5/6)^600 to miss one
    assert client.urls == list(expected)                                   # the configured list is untouched


def test_one_gateway_is_always_that_one():
    assert GatewayClient("http://only:5000", "sys").in_random_order() == ["http://only:5000"]
