"""The JSON Schemas in schemas/ (issue 22): every fixture's data, as Alma sends it (JSON) and
as almabridge normalises an XML body, validates against the schema its event's dataschema
names, with the standard validator (python jsonschema, draft 2020-12); malformed instances
are rejected; the files are what schemas/generate.py writes."""
import json
import os
import subprocess
import sys

import jsonschema
import pytest

from daemon import ROOT, Daemon, samples, wait_until, xml_fixtures

SCHEMAS = os.path.join(ROOT, "schemas")
BASE = "urn:almabridge:schemas:1:"


def schema(name):
    with open(os.path.join(SCHEMAS, name)) as f:
        s = json.load(f)
    jsonschema.Draft202012Validator.check_schema(s)
    return s


def validate(data, name):
    jsonschema.Draft202012Validator(schema(name)).validate(data)


def test_files_are_generated():
    names = sorted(n for n in os.listdir(SCHEMAS) if n.endswith(".json"))
    before = {n: open(os.path.join(SCHEMAS, n)).read() for n in names}
    subprocess.run([sys.executable, os.path.join(SCHEMAS, "generate.py")], check=True)
    after = {n: open(os.path.join(SCHEMAS, n)).read() for n in names}
    assert before == after, "run python3 schemas/generate.py and commit the result"
    for n in names:
        assert schema(n)["$id"] == BASE + n


@pytest.mark.parametrize("redact", [[], ["--redact", "none"]], ids=["redacted", "as-sent"])
def test_every_fixture_validates_as_json_and_xml(tmp_path, redact):
    # JSON and XML twins share their webhook ids: keep every copy (no deduplication)
    d = Daemon(redact + ["--dedupe-store", "none"], tmpdir=str(tmp_path)).start()
    try:
        wait_until(lambda: d.get("/readyz").status == 200, 20, "readyz")
        posted = 0
        for name, body in samples():
            assert d.post(body).status == 200, name
            posted += 1
        for name, body in xml_fixtures():
            assert d.post(body, content_type="application/xml").status == 200, name
            posted += 1
        events = d.events()
    finally:
        assert d.stop() == 0
    assert len(events) == posted
    used = set()
    for ev in events:
        assert ev["dataschema"].startswith(BASE), ev["dataschema"]
        name = ev["dataschema"][len(BASE):]
        validate(ev["data"], name)
        if name != "webhook.json":
            validate(ev["data"], "webhook.json")  # every event is a webhook too
        used.add(name)
    # every type with a fixture has its own schema (and an unknown action the generic one)
    assert used >= {"bib.json", "item.json", "job_end.json", "loan.json", "notification.json",
                    "request.json", "user.json", "webhook.json"}, used
    for name, body in samples():  # the raw JSON as Alma sends it, too
        data = json.loads(body)
        validate(data, ev_schema(data["action"]))


def ev_schema(action):
    return {"JOB_END": "job_end.json", "BIB": "bib.json", "ITEM": "item.json",
            "LOAN": "loan.json", "REQUEST": "request.json", "USER": "user.json",
            "NOTIFICATION": "notification.json"}.get(action, "webhook.json")


def broken(name, edit):
    data = json.loads(dict(samples())[name])
    edit(data)
    return data


@pytest.mark.parametrize("name,schema_name,edit", [
    ("loan_created", "loan.json", lambda d: d["item_loan"].pop("loan_id")),
    ("loan_created", "loan.json", lambda d: d.pop("item_loan")),
    ("loan_created", "loan.json", lambda d: d.update(action="ITEM")),
    ("loan_created", "webhook.json", lambda d: d.update(id={"value": 1})),
    ("loan_created", "webhook.json", lambda d: d.pop("action")),
    ("bib_created", "bib.json", lambda d: d["bib"].update(mms_id="")),
    ("item_updated", "item.json", lambda d: d["item"]["item_data"].update(pid=[1])),
    ("user_update", "user.json", lambda d: d["webhook_user"]["user"].update(primary_id=None)),
    ("job_end", "job_end.json", lambda d: d["job_instance"].update(progress={"x": 1})),
    ("request_placed_on_shelf", "request.json", lambda d: d.update(user_request=[])),
], ids=lambda x: x if isinstance(x, str) else "")
def test_malformed_instances_are_rejected(name, schema_name, edit):
    data = broken(name, edit)
    with pytest.raises(jsonschema.ValidationError):
        validate(data, schema_name)
    validate(json.loads(dict(samples())[name]), schema_name)  # the intact one passes
