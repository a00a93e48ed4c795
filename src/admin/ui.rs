//! The web UI's files, embedded in the binary so `/ui` works offline with nothing installed.
//!
//! The admin router answers `/ui/assets/<file>` with [`asset`] and every other `/ui` path with
//! [`INDEX_HTML`]: the page routes on the client (history API), so a deep link such as
//! `/ui/traces/{id}` must get the same page.

/// The page for every `/ui` path that is not an asset.
pub const INDEX_HTML: &[u8] = include_bytes!("ui/index.html");

/// The content type of [`INDEX_HTML`].
pub const INDEX_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Where the assets live; `asset` takes the whole path.
pub const ASSETS_PREFIX: &str = "/ui/assets/";

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file under `/ui/assets/`: its name, content type and bytes. A fixed table, so a path
/// can never reach anything else (no `..`, no file system).
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("ui/app.js")),
    ("app.css", CSS, include_bytes!("ui/app.css")),
    (
        "uplot.iife.min.js",
        JS,
        include_bytes!("ui/vendor/uplot.iife.min.js"),
    ),
    (
        "uplot.min.css",
        CSS,
        include_bytes!("ui/vendor/uplot.min.css"),
    ),
];

/// The content type and bytes of the asset at `path` (the whole request path, such as
/// `/ui/assets/app.js`); `None` for any other path.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let name = path.strip_prefix(ASSETS_PREFIX)?;
    ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, bytes)| (*content_type, *bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_serves_every_file_the_page_references() {
        let page = std::str::from_utf8(INDEX_HTML).expect("index.html is utf-8");
        for (file, _, bytes) in ASSETS {
            let path = format!("{ASSETS_PREFIX}{file}");
            assert!(page.contains(&path), "index.html does not reference {path}");
            let (_, served) = asset(&path).expect("asset is served");
            assert_eq!(served.len(), bytes.len());
        }
    }

    #[test]
    fn asset_answers_none_outside_the_assets() {
        assert!(asset("/ui/assets/").is_none());
        assert!(asset("/ui/assets/../mod.rs").is_none());
        assert!(asset("/ui/traces").is_none());
        assert!(asset("/ui/assets/app.js/x").is_none());
        assert!(asset("app.js").is_none());
    }
}
