"""Quotas: the token-bucket decision (pure) and the Lua script that applies it atomically agree."""

from __future__ import annotations

import asyncio
import math

import pytest
import redis.asyncio

from broker.quotas import Bucket, Limit, Quotas, decide, fill, retry_after

NOW = 1_700_000_000.0


def test_a_new_bucket_is_full_and_charged():
    decision = decide([None], [Limit(60, 1)], NOW)
    assert decision.allowed and decision.wait_s == 0
    assert decision.buckets == (Bucket(59.0, NOW),)


def test_an_empty_bucket_waits_for_the_next_token():
    # 60 requests a minute: one token a second; 0.25 left, 0.75 s until the next whole one.
    decision = decide([Bucket(0.25, NOW)], [Limit(60, 1)], NOW)
    assert not decision.allowed
    assert decision.wait_s == pytest.approx(0.75)
    assert decision.retry_after_s == 1
    # Refused: nothing is charged.
    assert decision.buckets == (Bucket(0.25, NOW),)


def test_refill_is_continuous_and_capped_at_a_minutes_worth():
    assert fill(Bucket(0.0, NOW), Limit(120, 1), NOW + 0.5) == pytest.approx(1.0)
    assert fill(Bucket(0.0, NOW), Limit(120, 1), NOW + 3600) == 120.0
    assert fill(Bucket(5.0, NOW), Limit(120, 1), NOW - 10) == 5.0  # a clock running backwards adds nothing


def test_both_buckets_must_hold_the_cost_and_the_wait_is_the_longer():
    limits = [Limit(60, 1), Limit(600, 100)]  # 1 request/s; 10 tokens/s
    decision = decide([Bucket(5.0, NOW), Bucket(40.0, NOW)], limits, NOW)
    assert not decision.allowed
    assert decision.wait_s == pytest.approx(6.0)  # 60 tokens more at 10/s; the request bucket is fine
    assert decision.buckets == (Bucket(5.0, NOW), Bucket(40.0, NOW))  # neither charged
    assert decide([Bucket(5.0, NOW), Bucket(40.0, NOW)], limits, NOW + 6.0).allowed


def test_a_cost_over_the_bucket_size_never_fits():
    decision = decide([None], [Limit(100, 101)], NOW)
    assert not decision.allowed and math.isinf(decision.wait_s)


def test_retry_after_rounds_up_to_whole_seconds():
    assert retry_after(0.01) == 1
    assert retry_after(2.0) == 2
    assert retry_after(2.0001) == 3


def test_the_lua_script_makes_the_pure_decision(machine_redis_url):
    """The same sequence of requests through decide() and through the script: the same answers."""
    async def run():
        client = redis.asyncio.Redis.from_url(machine_redis_url)
        await client.delete("sluice:quota:test")
        quotas = Quotas(client)
        buckets: list = [None, None]
        steps = [(0.0, 1, 30), (0.1, 1, 30), (0.2, 1, 30), (0.3, 1, 30), (1.0, 1, 30), (10.0, 1, 30),
                 (10.0, 1, 500)]
        try:
            for offset, requests, tokens in steps:
                now = NOW + offset
                limits = {"requests": Limit(3, requests), "tokens": Limit(120, tokens)}
                expected = decide(buckets, list(limits.values()), now)
                got = await quotas.charge("test", limits, now)
                assert got.allowed == expected.allowed, (offset, got, expected)
                assert got.wait_s == pytest.approx(expected.wait_s), (offset, got, expected)
                buckets = list(expected.buckets)
        finally:
            await client.delete("sluice:quota:test")
            await client.aclose()

    asyncio.run(run())
