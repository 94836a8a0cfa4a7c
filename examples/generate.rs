//! The model card's Python example, in Rust:
//!
//! ```python
//! tokenizer = AutoTokenizer.from_pretrained("llm-jp/llm-jp-3.1-1.8b-instruct4")
//! model = AutoModelForCausalLM.from_pretrained("llm-jp/llm-jp-3.1-1.8b-instruct4", device_map="auto", torch_dtype=torch.bfloat16)
//! chat = [
//!     {"role": "system", "content": "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"},
//!     {"role": "user", "content": "自然言語処理とは何か"},
//! ]
//! tokenized_input = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_tensors="pt").to(model.device)
//! with torch.no_grad():
//!     output = model.generate(tokenized_input, max_new_tokens=100, do_sample=True, top_p=0.95, temperature=0.7, repetition_penalty=1.05)[0]
//! print(tokenizer.decode(output))
//! ```
//!
//! Run: `cargo run --release --example generate [-- MODEL]` (MODEL: a folder or Hub id;
//! default llm-jp/llm-jp-3.1-1.8b-instruct4).

use llmjp::{Device, GenerateOptions, Llm, LoadOptions, Message, ModelSource};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "llm-jp/llm-jp-3.1-1.8b-instruct4".into());
    // torch_dtype=torch.bfloat16 (the default; on the CPU: bf16 weights, f32 arithmetic).
    let llm = Llm::load(
        &model.parse::<ModelSource>()?,
        Device::auto(),
        &LoadOptions::default(),
        &mut |_, _| {},
    )?;

    let chat = [
        Message::system("以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"),
        Message::user("自然言語処理とは何か"),
    ];
    // max_new_tokens=100, do_sample=True, top_p=0.95, temperature=0.7, repetition_penalty=1.05
    let generate = GenerateOptions::default();
    let output = llm.chat(&chat, &generate, &mut |_| true)?;

    let mut ids = output.prompt_ids.clone();
    ids.extend(&output.generated_ids);
    println!("{}", llm.tokenizer().decode(&ids, false)?);
    Ok(())
}
