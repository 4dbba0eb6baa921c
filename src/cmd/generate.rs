//! `importer generate`: a business-directory workbook (or CSV) for fixtures and benchmarks,
//! the same for the same seed. FRACTION of the rows get an empty Name, which
//! fixtures/businesses.sql refuses (name is NOT NULL).

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use rand::seq::{IndexedRandom, index};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_xlsxwriter::Workbook;
use tracing::info;

use super::Outcome;
use crate::cli::GenerateArgs;

/// The header row, in the order of fixtures/businesses.sql.
pub const HEADER: [&str; 9] = [
    "Name",
    "Category",
    "Phone",
    "Email",
    "Address",
    "City",
    "Country",
    "Website",
    "Description",
];

const ADJECTIVES: [&str; 16] = [
    "Blue", "Golden", "Green", "Silver", "Red", "Northern", "Sunny", "Quiet", "Bright", "Urban",
    "Rustic", "Royal", "Happy", "Little", "Grand", "Coastal",
];
const NOUNS: [&str; 16] = [
    "Harbor", "Oak", "River", "Maple", "Summit", "Lantern", "Anchor", "Meadow", "Bridge", "Falcon",
    "Orchard", "Cedar", "Pioneer", "Compass", "Willow", "Beacon",
];
const CATEGORIES: [&str; 12] = [
    "Bakery",
    "Cafe",
    "Restaurant",
    "Bookstore",
    "Hardware",
    "Pharmacy",
    "Florist",
    "Gym",
    "Salon",
    "Garage",
    "Dentist",
    "Grocery",
];
const STREETS: [&str; 10] = [
    "Main St",
    "High St",
    "Park Ave",
    "Oak Rd",
    "Station Rd",
    "Church Ln",
    "Mill Way",
    "Bridge St",
    "King St",
    "Elm Dr",
];
const PLACES: [(&str, &str); 12] = [
    ("Springfield", "United States"),
    ("Portland", "United States"),
    ("Toronto", "Canada"),
    ("Vancouver", "Canada"),
    ("Manchester", "United Kingdom"),
    ("Leeds", "United Kingdom"),
    ("Lyon", "France"),
    ("Hamburg", "Germany"),
    ("Valencia", "Spain"),
    ("Porto", "Portugal"),
    ("Melbourne", "Australia"),
    ("Auckland", "New Zealand"),
];
const WORDS: [&str; 24] = [
    "family",
    "owned",
    "local",
    "fresh",
    "friendly",
    "service",
    "since",
    "quality",
    "open",
    "daily",
    "award",
    "winning",
    "best",
    "in",
    "town",
    "trusted",
    "by",
    "neighbours",
    "for",
    "years",
    "with",
    "free",
    "parking",
    "delivery",
];

/// Writes the workbook (.xlsx) or CSV (.csv) named by `args.out`.
pub fn run(args: &GenerateArgs) -> anyhow::Result<Outcome> {
    let bad_row_count = (args.bad_rows * args.rows as f64).round() as u64;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let bad_rows: HashSet<u64> =
        index::sample(&mut rng, args.rows as usize, bad_row_count as usize)
            .into_iter()
            .map(|index| index as u64)
            .collect();
    let rows =
        (0..args.rows).map(move |index| business(&mut rng, index, bad_rows.contains(&index)));
    let is_csv = args
        .out
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"));
    if is_csv {
        write_csv(&args.out, rows)?;
    } else {
        write_xlsx(&args.out, rows, args.inline_strings)?;
    }
    info!(path = %args.out.display(), row_count = args.rows, bad_row_count, "generated");
    Ok(Outcome::AllIn)
}

/// One business; with `bad`, its Name is left empty.
fn business(rng: &mut ChaCha8Rng, index: u64, bad: bool) -> [String; 9] {
    let adjective = ADJECTIVES.choose(rng).expect("list is not empty");
    let noun = NOUNS.choose(rng).expect("list is not empty");
    let category = CATEGORIES.choose(rng).expect("list is not empty");
    let (city, country) = PLACES.choose(rng).expect("list is not empty");
    let street = STREETS.choose(rng).expect("list is not empty");
    let slug = format!("{}{}{}", adjective, noun, index).to_lowercase();
    let word_count = rng.random_range(8..20);
    let description: Vec<&str> = (0..word_count)
        .map(|_| *WORDS.choose(rng).expect("list is not empty"))
        .collect();
    let name = if bad {
        String::new()
    } else {
        format!("{adjective} {noun} {category}")
    };
    [
        name,
        category.to_string(),
        format!("+1-555-{:04}", rng.random_range(0..10_000)),
        format!("info@{slug}.example.com"),
        format!("{} {street}", rng.random_range(1..2000)),
        city.to_string(),
        country.to_string(),
        format!("https://{slug}.example.com"),
        description.join(" "),
    ]
}

fn write_xlsx(
    path: &Path,
    rows: impl Iterator<Item = [String; 9]>,
    inline_strings: bool,
) -> anyhow::Result<()> {
    let context = || format!("cannot write {}", path.display());
    let mut workbook = Workbook::new();
    // both modes stream rows to disk; constant memory writes inline strings, low memory
    // keeps a shared-string table, as most spreadsheet programs do
    let sheet = if inline_strings {
        workbook.add_worksheet_with_constant_memory()
    } else {
        workbook.add_worksheet_with_low_memory()
    }
    .with_context(context)?;
    sheet.set_name("Businesses").with_context(context)?;
    sheet.write_row(0, 0, HEADER).with_context(context)?;
    for (index, row) in rows.enumerate() {
        let row_index = u32::try_from(index + 1).context("too many rows for one sheet")?;
        for (column, value) in row.iter().enumerate() {
            if !value.is_empty() {
                sheet
                    .write_string(row_index, column as u16, value)
                    .with_context(context)?;
            }
        }
    }
    workbook.save(path).with_context(context)?;
    Ok(())
}

fn write_csv(path: &Path, rows: impl Iterator<Item = [String; 9]>) -> anyhow::Result<()> {
    let context = || format!("cannot write {}", path.display());
    let mut writer = csv::Writer::from_path(path).with_context(context)?;
    writer.write_record(HEADER).with_context(context)?;
    for row in rows {
        writer.write_record(&row).with_context(context)?;
    }
    writer.flush().with_context(context)?;
    Ok(())
}
