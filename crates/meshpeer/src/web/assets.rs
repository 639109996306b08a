//! The page's files, compiled into the binary: nothing is read from disk or
//! fetched from elsewhere at run time.

/// One embedded file.
#[derive(Clone, Copy, Debug)]
pub struct Asset {
    /// Name under `/assets/`.
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// The page itself, served at `/`.
pub const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../../assets/index.html"),
};

/// Files served under `/assets/`.
pub const ASSETS: [Asset; 4] = [
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../assets/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../assets/style.css"),
    },
    Asset {
        name: "API.md",
        content_type: "text/markdown; charset=utf-8",
        body: include_str!("../../assets/API.md"),
    },
    INDEX,
];

/// The file served at `/assets/<name>`.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// What the page may load: its own files and API only (no CDN, no inline
/// script), so a reference to another origin fails in the browser too.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";
