import base64
import datetime as dt

import pytest

from headwater.settings import Secret, SettingsError, load_settings, parse_pii_salts, quarter_bounds

KEY = base64.b64encode(b"k" * 32).decode()
KEY2 = base64.b64encode(b"z" * 32).decode()
SECRET_TEXT = "hunter2-very-secret"


def test_defaults_point_at_the_embedded_stack():
    s = load_settings({})
    assert s.kafka_brokers == "127.0.0.1:29092"
    assert s.clickhouse_url.startswith("chdb://")
    assert s.topics == ("analytics.events.raw", "analytics.events.rejected", "analytics.events.invalid")
    assert s.max_batch_events == 50


def test_every_problem_is_reported_at_once():
    env = {
        "HEADWATER_KAFKA_BROKERS": "no-port",
        "HEADWATER_MAX_BATCH_EVENTS": "51",
        "HEADWATER_CLICKHOUSE_URL": "http://x:8123",
        "HEADWATER_HMAC_KEYS": "kid-without-key",
        "HEADWATER_NOT_A_SETTING": "1",
        "HEADWATER_TLS_CERT_FILE": "/etc/cert.pem",  # without the key: a cross-field problem
        "HEADWATER_SIGNATURE_SKEW_SECONDS": "soon",
    }
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    problems = info.value.problems
    assert len(problems) == 7, problems
    joined = "\n".join(problems)
    for name in ("KAFKA_BROKERS", "MAX_BATCH_EVENTS", "CLICKHOUSE_URL", "HMAC_KEYS", "NOT_A_SETTING",
                 "SIGNATURE_SKEW_SECONDS"):
        assert f"HEADWATER_{name}" in joined
    assert "tls_cert_file and tls_key_file must be given together" in joined


def test_secrets_never_appear_in_repr_describe_or_errors(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(SECRET_TEXT + "\n")
    s = load_settings({"HEADWATER_KAFKA_SASL_PASSWORD_FILE": str(pw), "HEADWATER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                       "HEADWATER_KAFKA_SASL_MECHANISM": "PLAIN", "HEADWATER_HMAC_KEYS": f"k1:{KEY}",
                       "HEADWATER_POSTGRES_URL": f"postgresql://u:{SECRET_TEXT}@db/x"})
    assert s.kafka_config()["sasl.password"] == SECRET_TEXT  # the file's trailing newline is stripped
    for text in (repr(s), str(s), str(s.describe()), repr(s.hmac_keys)):
        assert SECRET_TEXT not in text
        assert KEY not in text
    # A bad secret is reported without echoing it.
    with pytest.raises(SettingsError) as info:
        load_settings({"HEADWATER_HMAC_KEYS": f"k1:{SECRET_TEXT}"})
    assert SECRET_TEXT not in str(info.value)
    assert "not valid base64" in str(info.value)


def test_file_variant_and_plain_variable_conflict(tmp_path):
    f = tmp_path / "keys"
    f.write_text(f"k1:{KEY}")
    with pytest.raises(SettingsError, match="not both"):
        load_settings({"HEADWATER_HMAC_KEYS": f"k1:{KEY}", "HEADWATER_HMAC_KEYS_FILE": str(f)})


def test_unreadable_secret_file_is_a_problem_not_a_crash(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings({"HEADWATER_ADMIN_TOKEN_FILE": str(tmp_path / "missing")})


def test_toml_sections_flatten_and_environment_wins(tmp_path):
    cfg = tmp_path / "headwater.toml"
    cfg.write_text(
        '[kafka]\nbrokers = "k1:9092,k2:9092"\nsecurity_protocol = "SSL"\n'
        '[kafka.options]\n"linger.ms" = "20"\n'
        '[clickhouse]\nurl = "clickhouses://ch:9440/analytics"\n')
    s = load_settings({"HEADWATER_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, config_file=cfg)
    assert s.kafka_brokers == "k1:9092,k2:9092"
    assert s.kafka_security_protocol == "PLAINTEXT"  # env beats file
    assert s.kafka_config()["linger.ms"] == "20"
    assert s.clickhouse_url == "clickhouses://ch:9440/analytics"


def test_toml_unknown_key_and_bad_syntax_are_reported(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[kafka]\nbrokerz = "x:1"\n')
    with pytest.raises(SettingsError, match="unknown setting 'kafka_brokerz'"):
        load_settings({}, config_file=cfg)
    cfg.write_text("this is = = not toml")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings({"HEADWATER_CONFIG": str(cfg)})


def test_hmac_keys_several_live_at_once():
    s = load_settings({"HEADWATER_HMAC_KEYS": f"2026a:{KEY}, 2026b:{KEY2}"})
    keys = s.hmac_keys.reveal()
    assert keys == {"2026a": b"k" * 32, "2026b": b"z" * 32}
    with pytest.raises(SettingsError, match="appears twice"):
        load_settings({"HEADWATER_HMAC_KEYS": f"a:{KEY},a:{KEY2}"})
    with pytest.raises(SettingsError, match="at least 16"):
        load_settings({"HEADWATER_HMAC_KEYS": "a:" + base64.b64encode(b"short").decode()})


def test_write_keys_and_kafka_options_lists():
    s = load_settings({"HEADWATER_WRITE_KEYS": "wk1, wk2", "HEADWATER_KAFKA_OPTIONS": "linger.ms=5,acks=all"})
    assert s.write_keys.reveal() == ("wk1", "wk2")
    assert s.kafka_config(**{"group.id": "g"})["acks"] == "all"
    assert s.kafka_config(**{"group.id": "g"})["group.id"] == "g"


def test_quarter_bounds():
    assert quarter_bounds("2026Q4") == (dt.date(2026, 10, 1), dt.date(2026, 12, 31))
    assert quarter_bounds("2027Q1") == (dt.date(2027, 1, 1), dt.date(2027, 3, 31))
    assert quarter_bounds("2024Q1")[1] == dt.date(2024, 3, 31)
    with pytest.raises(ValueError):
        quarter_bounds("2026Q5")


def test_salts_from_file_with_overlap_and_explicit_dates(tmp_path):
    f = tmp_path / "salts"
    f.write_text(f"# rotated every quarter\n2026Q4:{KEY}\n2027Q1:{KEY2}:2027-01-01:2027-04-30\n")
    s = load_settings({"HEADWATER_PII_SALTS_FILE": str(f), "HEADWATER_PII_SALT_OVERLAP_DAYS": "10"})
    salts = s.pii_salts.reveal()
    assert [x.salt_id for x in salts] == ["2026Q4", "2027Q1"]
    assert salts[0].valid_until == dt.date(2027, 1, 10)
    # Inside the overlap both salts apply, the event's own quarter first.
    assert [x.salt_id for x in s.salt_for(dt.date(2027, 1, 5))] == ["2027Q1", "2026Q4"]
    assert [x.salt_id for x in s.salt_for(dt.date(2027, 2, 1))] == ["2027Q1"]
    assert [x.salt_id for x in s.salt_for(dt.date(2026, 11, 1))] == ["2026Q4"]
    assert s.salt_for(dt.date(2027, 6, 1)) == []  # no salt: the flow refuses to start for that quarter


def test_salt_problems_are_specific():
    with pytest.raises(ValueError, match="valid_until is before valid_from"):
        parse_pii_salts(f"2026Q4:{KEY}:2026-12-01:2026-10-01", 0)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_pii_salts(f"2026Q4:{KEY}:1st:2nd", 0)
    with pytest.raises(ValueError, match="appears twice"):
        parse_pii_salts(f"2026Q4:{KEY},2026Q4:{KEY2}", 0)


def test_secret_equality_does_not_leak():
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert "a" not in repr(Secret("a"))
