use clap::Parser;
use regcred::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => match args.output_dir {
            None => print!("{}", regcred::crdgen::render_yaml()),
            Some(dir) => {
                for (name, yaml) in regcred::crdgen::render_files() {
                    let path = dir.join(name);
                    if let Err(e) = std::fs::write(&path, yaml) {
                        eprintln!("error: writing {}: {e}", path.display());
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        },
        Command::Version => {
            println!("regcred {}", env!("CARGO_PKG_VERSION"));
        }
        Command::Run(_) | Command::Check(_) => {
            let what = match cli.command {
                Command::Run(_) => "regcred run",
                _ => "regcred check",
            };
            eprintln!("error: {}", regcred::Error::NotImplemented(what));
            return std::process::ExitCode::from(2);
        }
    }
    std::process::ExitCode::SUCCESS
}
