//! Test helpers: Envoy resources written as YAML (as in an xDS file), read
//! through the same path as the file source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use prost::{Message, Name};

use crate::xds::file::parse_resources;

/// One resource of type `T` from its YAML body (without `"@type"`).
pub(crate) fn from_yaml<T: Message + Name + Default>(body: &str) -> T {
    let mut item: serde_json::Value = serde_yaml::from_str(body).expect("test YAML parses");
    item.as_object_mut()
        .expect("a resource is a mapping")
        .insert("@type".into(), T::type_url().into());
    let file = serde_json::json!({ "resources": [item] }).to_string();
    let anys = parse_resources(&file).unwrap_or_else(|e| panic!("{e}"));
    T::decode(anys[0].value.as_slice()).expect("transcoded bytes decode")
}

/// The first resource of a whole xDS file, as `T`.
pub(crate) fn first_in_file<T: Message + Name + Default>(file: &str) -> T {
    let anys = parse_resources(file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(anys[0].type_url, T::type_url());
    T::decode(anys[0].value.as_slice()).expect("transcoded bytes decode")
}

/// The fields of a list of ignored entries, for compact assertions.
pub(crate) fn fields(ignored: &[crate::kernel_native::plan::Ignored]) -> Vec<&str> {
    ignored.iter().map(|i| i.field.as_str()).collect()
}
