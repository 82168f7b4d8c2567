//! Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template` or HF `tokenizer_config.json`),
//! rendered with minijinja the way HF transformers renders it (`trim_blocks`, `lstrip_blocks`, Python string
//! methods, `raise_exception`, `strftime_now`).

use crate::error::{Error, Result};

/// Roles a message may have.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

pub use orchard_core::Message;

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are the texts the template may reference.
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String { strftime_now(&fmt) });
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| Error::Template(format!("the model's chat template does not compile: {e}")))?;
        Ok(ChatTemplate { env, source: source.to_string(), bos_token, eos_token })
    }

    /// Compiles `source` with `tokenizer`'s BOS and first EOS as the texts the template may reference.
    pub fn for_tokenizer(source: &str, tokenizer: &crate::Tokenizer) -> Result<Self> {
        Self::new(
            source,
            tokenizer.special_text(tokenizer.bos()),
            tokenizer.special_text(tokenizer.eos().first().copied()),
        )
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        for (i, m) in messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(Error::Request(format!(
                    "message {i}: unknown chat role `{}` (expected one of: {})",
                    m.role,
                    ROLES.join(", ")
                )));
            }
        }
        let tmpl = self.env.get_template(NAME).map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| Error::Template(format!("rendering failed: {e}")))
    }
}

/// A small strftime for templates that print today's date (`%Y`, `%m`, `%d`, `%b`, `%B`, `%H`, `%M`, `%%`), UTC.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600 % 24)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_with_default_system_prompt() -> Result<()> {
        let t = ChatTemplate::new(CHATML, String::new(), "<|im_end|>".into())?;
        let s = t.render(&[Message::new("user", "Hi")], true)?;
        assert_eq!(
            s,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        Ok(())
    }

    #[test]
    fn unknown_roles_are_refused() {
        let t = ChatTemplate::new(CHATML, String::new(), String::new()).expect("compiles");
        let err = t.render(&[Message::new("wizard", "x")], true).unwrap_err().to_string();
        assert!(err.contains("wizard") && err.contains("message 0"), "{err}");
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() -> Result<()> {
        let src = "{% if messages[0]['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{{ messages[0]['content'].strip().upper() }}";
        let t = ChatTemplate::new(src, String::new(), String::new())?;
        assert_eq!(t.render(&[Message::new("user", "  hi ")], false)?, "HI");
        let err = t.render(&[Message::new("tool", "x")], false).unwrap_err().to_string();
        assert!(err.contains("no tools"), "{err}");
        Ok(())
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
