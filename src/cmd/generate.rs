//! `importer generate`: a business-directory workbook (or CSV) for fixtures and benchmarks,
//! the same for the same seed. FRACTION of the rows get an empty Name, which
//! fixtures/businesses.sql refuses (name is NOT NULL).

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use rand::seq::{IndexedRandom, index};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_xlsxwriter::{DocProperties, ExcelDateTime, Workbook};
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
const STREET_NAMES: [&str; 24] = [
    "Main", "High", "Park", "Oak", "Station", "Church", "Mill", "Bridge", "King", "Elm",
    "Victoria", "Queen", "Maple", "Cedar", "Lake", "Hill", "Market", "Chapel", "River", "Garden",
    "Spring", "North", "Willow", "Harbour",
];
const STREET_TYPES: [&str; 8] = [
    "Street",
    "Avenue",
    "Road",
    "Lane",
    "Way",
    "Drive",
    "Boulevard",
    "Place",
];
/// City, region or postcode prefix, country, and the postcode's shape.
const PLACES: [(&str, &str, &str, Postcode); 12] = [
    ("Springfield", "IL", "United States", Postcode::Zip),
    ("Portland", "OR", "United States", Postcode::Zip),
    ("Toronto", "ON", "Canada", Postcode::Canadian),
    ("Vancouver", "BC", "Canada", Postcode::Canadian),
    ("Manchester", "M", "United Kingdom", Postcode::British),
    ("Leeds", "LS", "United Kingdom", Postcode::British),
    ("Lyon", "69", "France", Postcode::Digits),
    ("Hamburg", "20", "Germany", Postcode::Digits),
    ("Valencia", "46", "Spain", Postcode::Digits),
    ("Porto", "4", "Portugal", Postcode::Portuguese),
    ("Melbourne", "VIC", "Australia", Postcode::Four),
    ("Auckland", "", "New Zealand", Postcode::Four),
];

/// How a country writes its postcodes.
#[derive(Debug, Clone, Copy)]
enum Postcode {
    /// `IL 62704`
    Zip,
    /// `ON M5V 2T6`
    Canadian,
    /// `M1 4BT`
    British,
    /// `69002`: the region's digits, then the rest
    Digits,
    /// `4050-123`
    Portuguese,
    /// `VIC 3000`, `1010`
    Four,
}

const FIRST_NAMES: [&str; 16] = [
    "anna", "ben", "carla", "david", "elena", "farid", "grace", "hugo", "ines", "james", "keiko",
    "liam", "maria", "noah", "olivia", "pablo",
];
const LAST_NAMES: [&str; 12] = [
    "smith", "garcia", "muller", "tanaka", "brown", "rossi", "dubois", "silva", "kowalski",
    "nguyen", "okafor", "jensen",
];
const PAGES: [&str; 8] = [
    "",
    "/about",
    "/contact",
    "/menu",
    "/services",
    "/book-online",
    "/shop",
    "/locations",
];

/// Sentences of a description; `{c}` is the category (lowercase), `{city}` the city,
/// `{year}` a year.
const SENTENCES: [&str; 20] = [
    "Family-owned {c} serving {city} since {year}.",
    "An independent {c} in the heart of {city}.",
    "Award-winning {c} known for friendly, knowledgeable staff.",
    "Open seven days a week, with late hours on Fridays and Saturdays.",
    "Free parking behind the building and step-free access at the front.",
    "We deliver across {city} and the surrounding area.",
    "Book online or call ahead for same-day appointments.",
    "Trusted by neighbours and local businesses for over a decade.",
    "Gift cards, loyalty rewards and seasonal offers available.",
    "Ask about our catering and group bookings.",
    "Locally sourced, sustainably minded, and always fresh.",
    "Voted best {c} in {city} by readers of the local paper in {year}.",
    "Contactless payment accepted; cash welcome too.",
    "Pets welcome on the terrace.",
    "Our team speaks English, Spanish and French.",
    "Closed on public holidays.",
    "New customers get ten percent off their first visit.",
    "Find us two minutes from the station.",
    "Wheelchair accessible, with baby-changing facilities.",
    "Follow us for weekly specials and events.",
];

/// Shortest and longest description, in characters; targets are drawn evenly in between,
/// so the mean is about 130, like the free text of real directory exports.
const DESCRIPTION_CHARS: (usize, usize) = (60, 200);

/// The creation time written into every workbook: a fixed one, so that the same seed gives
/// the same bytes.
const CREATED: (u16, u8, u8) = (2024, 1, 1);

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
    let adjective = pick(rng, &ADJECTIVES);
    let noun = pick(rng, &NOUNS);
    let category = pick(rng, &CATEGORIES);
    let (city, region, country, postcode) = *pick(rng, &PLACES);
    let slug = format!("{adjective}-{noun}-{index}").to_lowercase();
    let name = if bad {
        String::new()
    } else {
        format!("{adjective} {noun} {category}")
    };
    let phone = format!(
        "+1-555-{:03}-{:04}",
        rng.random_range(100..1000),
        rng.random_range(0..10_000)
    );
    let email = format!(
        "{}.{}@{slug}.example.com",
        pick(rng, &FIRST_NAMES),
        pick(rng, &LAST_NAMES)
    );
    let address = address(rng, city, region, postcode);
    let website = format!("https://www.{slug}.example.com{}", pick(rng, &PAGES));
    let description = description(rng, &category.to_lowercase(), city);
    [
        name,
        category.to_string(),
        phone,
        email,
        address,
        city.to_string(),
        country.to_string(),
        website,
        description,
    ]
}

fn pick<'list, T>(rng: &mut ChaCha8Rng, list: &'list [T]) -> &'list T {
    list.choose(rng).expect("generator lists are not empty")
}

/// A full postal address: unit (sometimes), number, street, city and postcode.
fn address(rng: &mut ChaCha8Rng, city: &str, region: &str, postcode: Postcode) -> String {
    let unit = if rng.random_bool(0.3) {
        format!("Suite {}, ", rng.random_range(1..500))
    } else {
        String::new()
    };
    let street = format!(
        "{} {} {}",
        rng.random_range(1..2000),
        pick(rng, &STREET_NAMES),
        pick(rng, &STREET_TYPES)
    );
    let letter = |rng: &mut ChaCha8Rng| char::from(b'A' + rng.random_range(0..26u8));
    let code = match postcode {
        Postcode::Zip => format!("{region} {:05}", rng.random_range(10_000..100_000)),
        Postcode::Canadian => format!(
            "{region} {}{}{} {}{}{}",
            letter(rng),
            rng.random_range(0..10),
            letter(rng),
            rng.random_range(0..10),
            letter(rng),
            rng.random_range(0..10)
        ),
        Postcode::British => format!(
            "{region}{} {}{}{}",
            rng.random_range(1..20),
            rng.random_range(0..10),
            letter(rng),
            letter(rng)
        ),
        Postcode::Digits => format!("{region}{:03}", rng.random_range(0..1000)),
        Postcode::Portuguese => format!(
            "{region}{:03}-{:03}",
            rng.random_range(0..1000),
            rng.random_range(0..1000)
        ),
        Postcode::Four if region.is_empty() => format!("{:04}", rng.random_range(1000..10_000)),
        Postcode::Four => format!("{region} {:04}", rng.random_range(1000..10_000)),
    };
    format!("{unit}{street}, {city} {code}")
}

/// A description of [`DESCRIPTION_CHARS`] characters: distinct sentences until their
/// length is the nearest it can be to a target drawn evenly in that range (the last
/// sentence cut at a word when it would pass the maximum).
fn description(rng: &mut ChaCha8Rng, category: &str, city: &str) -> String {
    let (shortest, longest) = DESCRIPTION_CHARS;
    let target = rng.random_range(shortest..=longest);
    let mut text = String::with_capacity(longest + 80);
    while text.len() < target {
        let sentence = pick(rng, &SENTENCES)
            .replace("{c}", category)
            .replace("{city}", city)
            .replace("{year}", &rng.random_range(1975..2024).to_string());
        if text.contains(&sentence) {
            continue;
        }
        let without = text.len();
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&sentence);
        // the sentence that passes the target stays only if that is nearer to it
        if text.len() > target && without >= shortest && text.len() - target > target - without {
            text.truncate(without);
            break;
        }
    }
    if text.len() > longest {
        // every generated character is ASCII, so byte offsets are character offsets
        let cut = text[..longest].rfind(' ').unwrap_or(longest);
        text.truncate(cut);
        let kept = text.trim_end_matches([',', ';', '.']).len();
        text.truncate(kept);
        text.push('.');
    }
    text
}

fn write_xlsx(
    path: &Path,
    rows: impl Iterator<Item = [String; 9]>,
    inline_strings: bool,
) -> anyhow::Result<()> {
    let context = || format!("cannot write {}", path.display());
    let mut workbook = Workbook::new();
    let (year, month, day) = CREATED;
    let created =
        ExcelDateTime::from_ymd(year, month, day).context("the creation date is valid")?;
    workbook.set_properties(&DocProperties::new().set_creation_datetime(&created));
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
