//! Every fixture validates against the JSON Schema of its type, the Rust types agree
//! with the schemas, and the schemas reject what they should.

use std::{collections::BTreeMap, fs, path::PathBuf};

use ipp_schemas::{IppEventKind, KustomEvent};
use jsonschema::{Registry, Resource, Validator};
use serde_json::{json, Value};

const BASE: &str = "https://ipp-pipeline.dev/schemas/";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_dir_json(dir: &str) -> BTreeMap<String, (Vec<u8>, Value)> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(crate_dir().join(dir)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&path).unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        files.insert(name, (bytes, value));
    }
    files
}

struct Schemas {
    validators: BTreeMap<String, Validator>,
}

impl Schemas {
    fn load() -> Self {
        let files = read_dir_json("json");
        let mut registry = Registry::new();
        for (name, (_, schema)) in &files {
            assert_eq!(schema["$id"], format!("{BASE}{name}"), "$id of {name}");
            registry = registry
                .add(
                    format!("{BASE}{name}"),
                    Resource::from_contents(schema.clone()),
                )
                .unwrap();
        }
        let registry = registry.prepare().unwrap();
        let validators = files
            .iter()
            .map(|(name, (_, schema))| {
                let validator = jsonschema::options()
                    .with_registry(&registry)
                    .should_validate_formats(true)
                    .build(schema)
                    .unwrap_or_else(|e| panic!("schema {name}: {e}"));
                (name.clone(), validator)
            })
            .collect();
        Self { validators }
    }

    /// The most specific schema for an event: its own type's, else the generic IPP
    /// one, else the bare envelope.
    fn for_event(&self, event: &Value) -> &Validator {
        let event_type = event["type"].as_str().unwrap_or_default();
        let own = match IppEventKind::from_type(event_type) {
            IppEventKind::SessionFinalized => Some("ipp.session.finalized"),
            IppEventKind::Unknown(_) => None,
            _ => Some(event_type),
        };
        let name = match own {
            Some(t) if event_type.starts_with("ipp.") => format!("{t}.schema.json"),
            _ if event_type.starts_with("ipp.") => "ipp-event.schema.json".into(),
            _ => "envelope.schema.json".into(),
        };
        &self.validators[&name]
    }

    fn errors(&self, event: &Value) -> Vec<String> {
        self.for_event(event)
            .iter_errors(event)
            .map(|e| e.to_string())
            .collect()
    }
}

#[test]
fn every_fixture_validates_and_parses() {
    let schemas = Schemas::load();
    let fixtures = read_dir_json("fixtures");
    assert!(fixtures.len() >= 8, "fixtures went missing");
    for (name, (bytes, value)) in &fixtures {
        let errors = schemas.errors(value);
        assert!(errors.is_empty(), "{name} violates its schema: {errors:?}");
        let parsed = KustomEvent::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let is_ipp = value["type"].as_str().unwrap().starts_with("ipp.");
        assert_eq!(matches!(parsed, KustomEvent::Ipp(_)), is_ipp, "{name}");
    }
}

#[test]
fn documented_examples_are_kept_byte_for_byte() {
    let fixtures = read_dir_json("fixtures");
    let activated = &fixtures["documented-session-activated.json"].0;
    let expected = "{\n  \"id\": \"kevt_754uIatTW0hmi10Gggqe2H\",\n  \"merchant_id\": \"DM11917000\",\n  \"timestamp\": \"2026-06-05T18:37:41.232733416Z\",\n  \"type\": \"ipp.session.activated\",\n  \"data\": {\n    \"session_id\": \"c749c48d-df11-4ae3-8e5f-2c8491b16214\",\n    \"order_id\": null,\n    \"failure_reason\": null\n  }\n}";
    assert_eq!(std::str::from_utf8(activated).unwrap(), expected);

    let finalized = &fixtures["documented-session-finalized.json"].1;
    assert_eq!(
        finalized,
        &json!({
            "id": "kevt_62EvxyMEaAaHSGeoDTza47",
            "merchant_id": "DM11917000",
            "timestamp": "2026-06-05T18:33:39.608920367Z",
            "type": "ipp.session.finalized",
            "data": {
                "session_id": "dc01aa86-fb99-4d05-97dc-e79a22650f9a",
                "order_id": "ccf4e76a-f56d-4d3a-abf9-f4fe941f0a1f",
                "failure_reason": null
            }
        })
    );
}

#[test]
fn schemas_reject_broken_events() {
    let schemas = Schemas::load();
    let fixtures = read_dir_json("fixtures");
    let finalized = fixtures["documented-session-finalized.json"].1.clone();
    type Mutation = Box<dyn Fn(&mut Value)>;
    let broken: Vec<(&str, Mutation)> = vec![
        (
            "no id",
            Box::new(|v| drop(v.as_object_mut().unwrap().remove("id"))),
        ),
        (
            "no type",
            Box::new(|v| drop(v.as_object_mut().unwrap().remove("type"))),
        ),
        (
            "bad timestamp",
            Box::new(|v| v["timestamp"] = json!("yesterday")),
        ),
        (
            "no data",
            Box::new(|v| drop(v.as_object_mut().unwrap().remove("data"))),
        ),
        (
            "session id not a uuid",
            Box::new(|v| v["data"]["session_id"] = json!("abc")),
        ),
        (
            "finalized without order",
            Box::new(|v| v["data"]["order_id"] = Value::Null),
        ),
    ];
    for (what, mutate) in broken {
        let mut event = finalized.clone();
        mutate(&mut event);
        // An event without a type has no own schema: the IPP one must still refuse it.
        let validator = if event.get("type").is_some() {
            schemas.for_event(&event)
        } else {
            &schemas.validators["ipp-event.schema.json"]
        };
        assert!(
            !validator.is_valid(&event),
            "schema accepted an event with {what}"
        );
        let bytes = serde_json::to_vec(&event).unwrap();
        assert!(
            KustomEvent::parse(&bytes).is_err(),
            "parser accepted an event with {what}"
        );
    }
}
