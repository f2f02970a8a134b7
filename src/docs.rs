//! Renders the API reference (`docs/api.md`) from the comments in `proto/`.
use std::fmt::Write;

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet, field_descriptor_proto::Label};

use crate::pb::FILE_DESCRIPTOR_SET;

/// The Markdown reference of every `jisucloud.*` file in the descriptor set.
pub fn api_markdown() -> String {
    let set =
        FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set built by build.rs");
    let mut out = String::from(
        "# Jisu API reference\n\n\
         Generated from `proto/` by `jisu docs api --out docs/api.md`; do not edit by hand.\n",
    );
    for file in set
        .file
        .iter()
        .filter(|f| f.package().starts_with("jisucloud."))
    {
        render_file(&mut out, file);
    }
    out
}

fn comment(file: &FileDescriptorProto, path: &[i32]) -> String {
    file.source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|l| l.path == path))
        .map(|l| {
            l.leading_comments()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn render_file(out: &mut String, file: &FileDescriptorProto) {
    let pkg = file.package();
    let _ = writeln!(out, "\n## `{}`\n", file.name());
    for (s, service) in file.service.iter().enumerate() {
        let _ = writeln!(out, "### service `{pkg}.{}`\n", service.name());
        let doc = comment(file, &[6, s as i32]);
        if !doc.is_empty() {
            let _ = writeln!(out, "{doc}\n");
        }
        for (m, method) in service.method.iter().enumerate() {
            let stream = |yes: bool| if yes { "stream " } else { "" };
            let _ = writeln!(
                out,
                "#### `{}({}{}) returns ({}{})`\n",
                method.name(),
                stream(method.client_streaming()),
                short(method.input_type()),
                stream(method.server_streaming()),
                short(method.output_type()),
            );
            let doc = comment(file, &[6, s as i32, 2, m as i32]);
            if !doc.is_empty() {
                let _ = writeln!(out, "{doc}\n");
            }
        }
    }
    for (i, message) in file.message_type.iter().enumerate() {
        let _ = writeln!(out, "### message `{pkg}.{}`\n", message.name());
        let doc = comment(file, &[4, i as i32]);
        if !doc.is_empty() {
            let _ = writeln!(out, "{doc}\n");
        }
        if message.field.is_empty() {
            continue;
        }
        out.push_str("| # | field | type | description |\n|---|---|---|---|\n");
        for (f, field) in message.field.iter().enumerate() {
            let mut ty = match field.type_name() {
                "" => format!("{:?}", field.r#type()).to_lowercase(),
                name => short(name).to_owned(),
            };
            if field.label() == Label::Repeated {
                ty = format!("repeated {ty}");
            } else if field.proto3_optional() {
                ty = format!("optional {ty}");
            }
            let _ = writeln!(
                out,
                "| {} | `{}` | `{ty}` | {} |",
                field.number(),
                field.name(),
                one_line(&comment(file, &[4, i as i32, 2, f as i32])),
            );
        }
        out.push('\n');
    }
}

fn short(type_name: &str) -> &str {
    type_name.rsplit('.').next().unwrap_or(type_name)
}
