//! Chat templates: the Jinja template of a Hugging Face tokenizer (`chat_template` in
//! `tokenizer_config.json`), rendered with minijinja and Python string methods, so prompts
//! reach an instruct model in the format it was trained on.

use minijinja::{Environment, context};

/// A template compiled once, with the tokenizer's BOS and EOS texts it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles a template and checks that it renders a one-message conversation.
    pub fn new(template: String, bos: String, eos: String) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Templates call `raise_exception` on unsupported conversations.
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", template)
            .map_err(|e| format!("invalid chat template: {e}"))?;
        let chat = ChatTemplate { env, bos, eos };
        chat.render_user("hello")?;
        Ok(chat)
    }

    /// One user message with the generation prompt added (HF's `add_generation_prompt=True`).
    pub fn render_user(&self, text: &str) -> Result<String, String> {
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        tmpl.render(context! {
            messages => vec![context! { role => "user", content => text }],
            add_generation_prompt => true,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| format!("the chat template failed to render: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5's template, shortened to the branches a one-message prompt takes.
    const CHATML: &str = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

    #[test]
    fn renders_a_chatml_user_turn_with_the_generation_prompt() {
        let chat = ChatTemplate::new(CHATML.into(), String::new(), String::new()).unwrap();
        let out = chat.render_user(" What is 2+2? ").unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama3_style_template_uses_the_bos_token() {
        let t = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
        let chat = ChatTemplate::new(t.into(), "<|begin_of_text|>".into(), String::new()).unwrap();
        let out = chat.render_user("hi").unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn a_broken_template_is_an_error_not_a_panic() {
        let new = |t: &str| ChatTemplate::new(t.into(), String::new(), String::new());
        assert!(new("{% for m in messages %}").is_err());
        assert!(new("{{ raise_exception('no') }}").is_err());
    }
}
