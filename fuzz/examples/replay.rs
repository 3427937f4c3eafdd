//! Time one input through one target: `cargo run -p fuzz --example replay -- TARGET FILE`.
fn main() {
    let mut a = std::env::args().skip(1);
    let (name, file) = (a.next().expect("TARGET"), a.next().expect("FILE"));
    let t = fuzz::target(&name).expect("no such target");
    let data = std::fs::read(file).expect("read input");
    let start = std::time::Instant::now();
    t(&data);
    println!("{name}: {} bytes in {:?}", data.len(), start.elapsed());
}
