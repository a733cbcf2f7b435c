//! Our line protocol against real InfluxDB 1.6, which is strict about
//! escaping and types: what we write must read back exactly.

use infermon_schemas::{FieldValue, Point};
use serde_json::Value;

use crate::support::{influx_query, required_env};

#[test]
fn tricky_points_round_trip_through_influxdb_1_6() {
    let base = required_env("INFERMON_TEST_INFLUXDB_V1_URL");
    let db = required_env("INFERMON_TEST_INFLUXDB_V1_DB");
    let run = std::process::id();
    let measurement = format!("lat ency,x=1 {run}");
    let ts_ms = 1_763_800_020_000;
    let point = Point::new(&measurement, ts_ms)
        .tag("mo del", "a,b=c d")
        .tag("model_version", "v=2 beta")
        .tag("path", r"back\slash")
        .tag("unicode", "模型-é")
        .tag("multi", "line\nbreak")
        .field("count", FieldValue::Int(42))
        .field("p99", FieldValue::Float(12.5))
        .field("tiny", FieldValue::Float(1e-7))
        .field("drifted", FieldValue::Bool(true))
        .field("state", FieldValue::Str(r#"say "hi" \ bye, a=b"#.into()))
        .field("f,i=eld k", FieldValue::Float(-3.25))
        .field("skipped", FieldValue::Float(f64::NAN));
    let mut body = String::new();
    assert!(point.write_line_protocol(&mut body));

    let resp = ureq::post(&format!("{base}/write"))
        .query("db", &db)
        .query("precision", "ns")
        .send_string(&body);
    match resp {
        Ok(r) => assert_eq!(r.status(), 204, "{body}"),
        Err(e) => {
            let msg = e.to_string();
            let detail = e.into_response().map(|r| r.into_string());
            panic!("InfluxDB rejected {body:?}: {msg} {detail:?}")
        }
    }

    let q = format!("SELECT * FROM \"{}\"", measurement.replace('"', "\\\""));
    let result = influx_query(&base, &db, &q);
    let series = &result["results"][0]["series"][0];
    assert_eq!(series["name"], measurement.as_str(), "{result}");
    let columns: Vec<&str> = series["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let values = series["values"][0].as_array().unwrap();
    let get = |name: &str| -> &Value {
        let i = columns
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("no column {name:?} in {columns:?}"));
        &values[i]
    };
    assert_eq!(get("time").as_i64(), Some(ts_ms * 1_000_000));
    assert_eq!(get("mo del"), "a,b=c d");
    assert_eq!(get("model_version"), "v=2 beta");
    assert_eq!(get("path"), r"back\slash");
    assert_eq!(get("unicode"), "模型-é");
    assert_eq!(get("multi"), "line break");
    assert_eq!(get("count").as_i64(), Some(42));
    assert_eq!(get("p99").as_f64(), Some(12.5));
    assert_eq!(get("tiny").as_f64(), Some(1e-7));
    assert_eq!(get("drifted").as_bool(), Some(true));
    assert_eq!(get("state"), r#"say "hi" \ bye, a=b"#);
    assert_eq!(get("f,i=eld k").as_f64(), Some(-3.25));
    assert!(!columns.contains(&"skipped"), "NaN fields are not written");

    // Types are exactly what the contract says: integer, float, boolean, string.
    let keys = influx_query(
        &base,
        &db,
        &format!("SHOW FIELD KEYS FROM \"{measurement}\""),
    );
    let types: Vec<(String, String)> = keys["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v[0].as_str().unwrap().into(), v[1].as_str().unwrap().into()))
        .collect();
    for (field, ty) in [
        ("count", "integer"),
        ("p99", "float"),
        ("drifted", "boolean"),
        ("state", "string"),
    ] {
        assert!(
            types.contains(&(field.into(), ty.into())),
            "{field}: {types:?}"
        );
    }
}

fn write_v1(base: &str, db: &str, body: &str) -> Result<u16, String> {
    match ureq::post(&format!("{base}/write"))
        .query("db", db)
        .query("precision", "ns")
        .send_string(body)
    {
        Ok(r) => Ok(r.status()),
        Err(e) => Err(e
            .into_response()
            .map(|r| r.into_string().unwrap_or_default())
            .unwrap_or_default()),
    }
}

#[test]
fn each_special_character_in_each_position_round_trips_through_influxdb_1_6() {
    let base = required_env("INFERMON_TEST_INFLUXDB_V1_URL");
    let db = required_env("INFERMON_TEST_INFLUXDB_V1_DB");
    let run = std::process::id();
    // Everything InfluxDB 1.x can represent: a backslash followed by an
    // ordinary character included (it has no escape for one at the end of a
    // tag or before a separator; see the next test).
    let specials = [",", "=", " ", "\"", "\\", "'", "é", ",=\" \\"];
    for (i, s) in specials.iter().enumerate() {
        let measurement = format!("rt{run}m{i}{s}x");
        let point = Point::new(&measurement, 1_763_800_020_000 + i as i64)
            .tag(format!("k{s}x"), format!("v{s}x"))
            .tag("model", format!("m{s}x"))
            .field(format!("f{s}x"), FieldValue::Str(format!("s{s}x{s}")))
            .field("n", FieldValue::Int(i as i64));
        let mut body = String::new();
        assert!(point.write_line_protocol(&mut body));
        assert_eq!(write_v1(&base, &db, &body), Ok(204), "{s:?}: {body}");
        let q = format!(
            "SELECT * FROM \"{}\"",
            measurement.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let result = influx_query(&base, &db, &q);
        let series = &result["results"][0]["series"][0];
        assert_eq!(
            series["name"],
            measurement.as_str(),
            "{s:?}: {body} -> {result}"
        );
        let columns: Vec<&str> = series["columns"]
            .as_array()
            .unwrap_or_else(|| panic!("{s:?}: {body} -> {result}"))
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let values = series["values"][0].as_array().unwrap();
        let get = |name: &str| {
            let at = columns
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("{s:?}: no column {name:?} in {columns:?} ({body})"));
            values[at].clone()
        };
        assert_eq!(get(&format!("k{s}x")), format!("v{s}x"), "{body}");
        assert_eq!(get("model"), format!("m{s}x"), "{body}");
        assert_eq!(get(&format!("f{s}x")), format!("s{s}x{s}"), "{body}");
        assert_eq!(get("n"), i as i64, "{body}");
    }
}

#[test]
fn a_tag_ending_in_a_backslash_never_swallows_the_next_tag() {
    // What we write keeps every tag (our parser follows the InfluxDB 2.x
    // rules) and VictoriaMetrics reads the value back exactly; InfluxDB 1.x
    // has no way to store it and refuses that one line (a documented limit
    // of 1.x, README "Line protocol").
    let run = std::process::id();
    let name = format!("lp_trailing_{run}");
    let point = Point::new(&name, 1_763_800_020_000)
        .tag("surface", "search\\")
        .tag("model_version", "1")
        .field("value", FieldValue::Float(1.5));
    let mut body = String::new();
    assert!(point.write_line_protocol(&mut body));
    assert_eq!(
        body,
        format!("{name},surface=search\\\\,model_version=1 value=1.5 1763800020000000000\n")
    );
    assert_eq!(
        infermon_schemas::line_protocol::parse_line(body.trim_end()).unwrap(),
        point
    );

    let vm = required_env("INFERMON_TEST_VM_URL");
    let status = ureq::post(&format!("{vm}/write"))
        .send_string(&body)
        .unwrap()
        .status();
    assert_eq!(status, 204);
    ureq::get(&format!("{vm}/internal/force_flush"))
        .call()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let series = loop {
        let text = ureq::post(&format!("{vm}/api/v1/export"))
            .send_form(&[
                ("match[]", &format!("{{__name__=\"{name}_value\"}}")),
                ("start", "0"),
            ])
            .unwrap()
            .into_string()
            .unwrap();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(
            std::time::Instant::now() < until,
            "VictoriaMetrics never showed {name}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    assert_eq!(series["metric"]["surface"], "search\\", "{series}");
    assert_eq!(series["metric"]["model_version"], "1", "{series}");

    let base = required_env("INFERMON_TEST_INFLUXDB_V1_URL");
    let db = required_env("INFERMON_TEST_INFLUXDB_V1_DB");
    let refused = write_v1(&base, &db, &body).expect_err("InfluxDB 1.x has no escape for it");
    assert!(refused.contains("invalid tag format"), "{refused}");
}
