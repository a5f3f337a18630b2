#!/usr/bin/env python3
"""Writes N Kafka records of Kustom ipp.* webhook events, one per line, in the format
Kafka's ConsoleProducer reads with parse.headers=true and parse.key=true:

    header=value,header=value...<TAB>key<TAB>value

value: the JSON body (as loadgen/src/workload.rs builds it: serde_json, keys sorted);
key: data.session_id; headers: the ones ingest writes (schemas/src/record.rs).
Sessions: created, then activated (85 %), 0-3 payment.failed (20 %), then finalized
(70 %; 10 % of those as ipp.payment.finalized), cancelled (15 %) or abandoned.
Seeded: the same N gives the same file.  Usage: gen_records.py N > records.txt
"""
import json, random, sys, uuid, datetime

n = int(sys.argv[1])
rng = random.Random(17)
t0 = datetime.datetime(2026, 12, 3, 7, 0, 0, tzinfo=datetime.timezone.utc)
ns = 0  # nanoseconds since t0

def ts(nanos):
    s, frac = divmod(nanos, 1_000_000_000)
    return (t0 + datetime.timedelta(seconds=s)).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"

def u():
    return uuid.UUID(int=rng.getrandbits(128), version=4)

out = sys.stdout
written = 0
while written < n:
    session = u()
    merchant = f"DM{rng.randrange(1, 200):08d}"
    events = [("ipp.session.created", None, None)]
    if rng.random() < 0.85:
        events.append(("ipp.session.activated", None, None))
    if rng.random() < 0.2:
        for _ in range(rng.randint(1, 3)):
            events.append(("ipp.payment.failed", None,
                           rng.choice(["card_declined", "insufficient_funds", "timeout"])))
    fate = rng.random()
    if fate < 0.70:
        kind = "ipp.payment.finalized" if rng.random() < 0.1 else "ipp.session.finalized"
        events.append((kind, str(u()), None))
    elif fate < 0.85:
        events.append(("ipp.session.cancelled", None, None))
    for i, (etype, order, reason) in enumerate(events):
        if written >= n:
            break
        ns += rng.randrange(200, 20_000) * 1_000_000 + rng.randrange(1_000_000)
        event_id = f"kevt_{session.hex}_{i}"
        stamp = ts(ns)
        body = json.dumps({
            "data": {"failure_reason": reason, "order_id": order, "session_id": str(session)},
            "id": event_id, "merchant_id": merchant, "timestamp": stamp, "type": etype,
        }, separators=(",", ":"), sort_keys=True)
        webhook_id = f"msg_{rng.getrandbits(96):024x}"
        headers = ",".join([
            f"kustom-event-id={event_id}", f"kustom-event-type={etype}",
            f"webhook-id={webhook_id}", f"webhook-timestamp={ns // 1_000_000_000 + 1796281200}",
            f"ipp-received-at={ts(ns + 5_000_000)}", f"kustom-merchant-id={merchant}",
        ])
        out.write(f"{headers}\t{session}\t{body}\n")
        written += 1
